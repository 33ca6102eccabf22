"""The search page (issue 39) in headless Chromium against `serving.server`
over a pushed model: how long a person waits, and what the thumbnails cost.

  python -m benchmarks.search_page --model-dir outputs/serving_model/mae-tfx \
      [--repeats 5] [--screenshot docs/images/search_page.png]

Prints, for the newest version: its thumbnail store (images, bytes, bytes
per image, projected per 50,000); then, each the median of `--repeats`
fresh page loads in one browser: the page to ready (HTML, script, style
and the `search_index` call), a search by id to its results with every
thumbnail loaded, and the duplicates review's first page, the first time
(the groups are found on that request) and again (kept). The query is the
index's first image. `--screenshot` saves the search by id, 1280 x 900 (the
README's picture).
"""

import argparse
import os
import statistics
import sys
import time

from models import run_log

if __name__ == "__main__":
  run_log.install()

# pylint: disable=wrong-import-position
import requests

from benchmarks.host import host_line
from models import search_index, thumbnails
from models.names import SEARCH_INDEX_DIR
from serving.launch import ServerProcess
from serving.model_store import versions_on_disk
from serving.page_browser import chromium, images_loaded, stale, wait_ready


def timed(driver, url: str, thumbs: str = "") -> float:
  """Seconds from opening `url` to the page ready (and the `thumbs` images loaded)."""
  start = time.perf_counter()
  stale(driver)
  driver.get(url)
  wait_ready(driver)
  if thumbs:
    images_loaded(driver, thumbs)
  return time.perf_counter() - start


def main(argv=None) -> dict:
  """Measures the page over --model-dir and prints the figures."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--model-dir", required=True, help="the Pusher's base directory")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--screenshot", default=None, help="a PNG of the search by id")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  base = os.path.abspath(args.model_dir)
  version = versions_on_disk(base)[-1]
  index_dir = os.path.join(base, str(version), SEARCH_INDEX_DIR)
  records = search_index.read_records(index_dir)
  store = thumbnails.ThumbnailStore.load(index_dir)
  print(host_line(load=True))
  if store is None:
    print(f"version {version}: {len(records.ids)} images, no thumbnails")
  else:
    per_image = store.size_bytes / max(1, len(store))
    print(
        f"version {version}: {len(store)} thumbnails, {store.size_bytes / 1e6:.1f} MB "
        f"({per_image:.0f} bytes an image: {per_image * 50_000 / 1e6:.1f} MB per 50,000)"
    )
  figures = {}
  with ServerProcess(["--model-dir", base, "--grpc-port", "-1"]) as server, chromium() as driver:
    name = os.path.basename(base)
    page = f"{server.url}/"
    query = f"{server.url}/?id={records.ids[0]}&k=12"
    duplicates = f"{server.url}/?view=duplicates"
    first_duplicates = timed(driver, duplicates)
    runs = {"page": [], "search": [], "duplicates": []}
    for _ in range(args.repeats):
      runs["page"].append(timed(driver, page))
      runs["search"].append(timed(driver, query, "#results img.thumb" if store else ""))
      runs["duplicates"].append(timed(driver, duplicates, "#groups img.thumb" if store else ""))
    groups = requests.get(
        f"{server.url}/v1/models/{name}/versions/{version}/duplicates?limit=1", timeout=600
    ).json()
    figures = {key: statistics.median(values) for key, values in runs.items()}
    figures["duplicates_first"] = first_duplicates
    print(f"page to ready: {figures['page'] * 1e3:.0f} ms (median of {args.repeats})")
    print(f"search by id, 12 results and their thumbnails: {figures['search'] * 1e3:.0f} ms")
    print(
        f"duplicates review ({groups['groups_total']} groups, {groups['images_in_groups']} of "
        f"{groups['images']} images): first {first_duplicates:.1f} s, then "
        f"{figures['duplicates'] * 1e3:.0f} ms"
    )
    if args.screenshot:
      timed(driver, query, "#results img.thumb" if store else "")
      driver.save_screenshot(args.screenshot)
      print(f"screenshot: {args.screenshot}")
  return figures


if __name__ == "__main__":
  main()
