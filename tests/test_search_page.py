"""The search page in a real browser: Debian's headless Chromium, driven
through chromedriver, against `serving.server` on loopback over the smoke
run's pushed model. Each state is screenshotted under the test's output
folder (printed at the end)."""

import json
import os
import re
import shutil
import time

import pytest
import requests

from models import names
from models.examples import read_examples
from pipeline.runs import pipeline_inputs
from serving.launch import ServerProcess
from serving.page_browser import NoBrowser, chromium, images_loaded, results, stale, wait_ready

pytestmark = pytest.mark.server

NAME = "mae-tfx"
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server(model_base):
  with ServerProcess(["--model-dir", model_base, "--grpc-port", "-1"]) as running:
    yield running
  assert "Traceback" not in running.stderr, running.stderr


@pytest.fixture(scope="module")
def browser():
  """Headless Chromium (Debian's `chromium` and `chromium-driver`, which
  `make test` installs when missing)."""
  try:
    with chromium() as driver:
      yield driver
  except NoBrowser as e:
    pytest.fail(str(e))


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
  """The folder the screenshots go to."""
  folder = tmp_path_factory.mktemp("search_page_screenshots")
  yield folder
  print(f"\nsearch page screenshots: {folder}")


@pytest.fixture(scope="module")
def corpus_image(smoke_run, tmp_path_factory):
  """(a corpus image's file, its id, its class) from the smoke run's train split."""
  examples_uri, _ = pipeline_inputs(smoke_run.metadata_path)
  records = read_examples(names.split_files(examples_uri, "train"), limit=6)
  path = tmp_path_factory.mktemp("upload") / "train-5.png"
  path.write_bytes(records.images[5])
  return str(path), "train/5"


def test_search_page_in_a_real_browser(server, browser, shots, corpus_image):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  image_path, image_id = corpus_image
  info = requests.get(f"{server.url}/v1/models/{NAME}/search_index", timeout=30).json()
  version = info["model_version"]

  # The page, the model version on screen.
  start = time.perf_counter()
  browser.get(server.url + "/")
  wait_ready(browser)
  load_seconds = time.perf_counter() - start
  assert f"version {version}" in browser.find_element(By.ID, "model").text
  assert len(Select(browser.find_element(By.ID, "class")).options) == 1 + len(info["classes"])

  # Upload a corpus image: it comes first, at score >= 0.999, thumbnail loaded.
  stale(browser)
  browser.find_element(By.ID, "file").send_keys(image_path)
  wait_ready(browser)
  found = results(browser)
  assert found[0]["id"] == image_id and found[0]["score"] >= 0.999, found[:3]
  assert len(found) == 12
  widths = images_loaded(browser, "#results img.thumb")
  assert len(widths) == 12 and all(w > 0 for w in widths), widths
  browser.save_screenshot(str(shots / "1-upload.png"))

  # A class filter: only that class, through :neighbors' restricts.
  other = next(c["name"] for c in info["classes"] if c["name"] != found[0]["cls"])
  stale(browser)
  Select(browser.find_element(By.ID, "class")).select_by_value(other)
  wait_ready(browser)
  filtered = results(browser)
  assert filtered and {r["cls"] for r in filtered} == {other}, filtered
  assert f"class={other}" in browser.current_url
  browser.save_screenshot(str(shots / "2-class-filter.png"))

  # A result's "similar" link: a shareable query by id, the filter kept.
  first = filtered[0]["id"]
  stale(browser)
  browser.find_elements(By.CSS_SELECTOR, "#results .result a.similar")[0].click()
  wait_ready(browser)
  assert "id=" in browser.current_url and f"class={other}" in browser.current_url
  assert first in browser.find_element(By.ID, "query").text
  similar = results(browser)
  assert similar and first not in [r["id"] for r in similar]  # a query by id leaves itself out
  assert {r["cls"] for r in similar} == {other}
  browser.save_screenshot(str(shots / "3-similar.png"))
  shared = browser.current_url
  browser.get(shared)  # the address alone repeats the search
  wait_ready(browser)
  assert results(browser) == similar

  # The duplicates view: the server's groups, largest first, with thumbnails.
  stale(browser)
  browser.find_element(By.ID, "tab-duplicates").click()
  wait_ready(browser)
  groups = requests.get(
      f"{server.url}/v1/models/{NAME}/versions/{version}/duplicates?limit=10", timeout=60
  ).json()
  summary = browser.find_element(By.ID, "dup-summary").text
  assert f"{groups['groups_total']} groups" in summary
  shown = browser.find_elements(By.CSS_SELECTOR, "#groups .group")
  assert len(shown) == min(10, groups["groups_total"])
  if shown:
    sizes = [len(g.find_elements(By.CSS_SELECTOR, ".result")) for g in shown]
    assert sizes == [len(g["items"]) for g in groups["groups"]] == sorted(sizes, reverse=True)
    assert all(w > 0 for w in images_loaded(browser, "#groups img.thumb"))
  csv_link = browser.find_element(By.ID, "dup-csv").get_attribute("href")
  csv = requests.get(csv_link, timeout=60)
  assert csv.headers["Content-Type"].startswith("text/csv")
  assert len(csv.text.splitlines()) == 1 + groups["images_in_groups"]
  browser.save_screenshot(str(shots / "4-duplicates.png"))

  # A bad upload: the server's own error on screen.
  stale(browser)
  browser.find_element(By.ID, "tab-search").click()
  wait_ready(browser)
  bad = shots / "not-an-image.png"
  bad.write_bytes(b"this is not an image")
  expected = requests.post(
      f"{server.url}/v1/models/{NAME}/versions/{version}:neighbors",
      json={"instances": [{"b64": "dGhpcyBpcyBub3QgYW4gaW1hZ2U="}], "k": 3},
      timeout=30,
  ).json()["error"]
  stale(browser)
  browser.find_element(By.ID, "file").send_keys(str(bad))
  wait_ready(browser, "error")
  error = browser.find_element(By.ID, "error")
  assert error.is_displayed() and expected in error.text and error.text.startswith("400")
  browser.save_screenshot(str(shots / "5-bad-upload.png"))

  # A phone-sized screen: no sideways scrolling.
  browser.set_window_size(390, 844)
  browser.get(shared)
  wait_ready(browser)
  assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
  browser.save_screenshot(str(shots / "6-phone.png"))
  browser.set_window_size(1280, 900)
  (shots / "timings.json").write_text(json.dumps({"first_load_seconds": load_seconds}))
  print(f"\nsearch page: first load to ready {load_seconds:.2f} s")


def test_version_without_an_index_says_so(browser, smoke_run, tmp_path):
  """A version pushed without a search index: the page says what is missing."""
  base = tmp_path / NAME
  shutil.copytree(smoke_run.serving_model_dir, base, ignore=shutil.ignore_patterns(".staging-*"))
  for version in os.listdir(base):
    shutil.rmtree(base / version / names.SEARCH_INDEX_DIR, ignore_errors=True)
  with ServerProcess(["--model-dir", str(base), "--grpc-port", "-1"]) as running:
    browser.get(running.url + "/")
    wait_ready(browser, "error")
    assert "has no search index" in browser.find_element("id", "error").text


def test_the_page_calls_only_documented_routes():
  """Every route in the page's ROUTES table is in docs/serving.md's route
  table, and the page fetches nothing else (no CDN, no other host)."""
  page_dir = os.path.join(PROJECT, "serving", "page")
  script = open(os.path.join(page_dir, "search.js"), encoding="utf-8").read()
  table = re.search(r"const ROUTES = \{(.*?)\n\};", script, re.S).group(1)
  templates = re.findall(r"`([^`]+)`", table)
  assert len(templates) == 4
  with open(os.path.join(PROJECT, "docs", "serving.md"), encoding="utf-8") as f:
    docs = f.read()
  for template in templates:
    route = (
        template.replace("${MODEL}", "<name>")
        .replace("/versions/${v}", "[/versions/<v>]")
        .replace("${encodeId(id)}", "<id>")
        .split("?")[0]
    )
    if "[/versions/<v>]" not in route:  # the docs give both forms in one line
      route = route.replace("/v1/models/<name>", "/v1/models/<name>[/versions/<v>]")
    assert route in docs, f"{template} -> {route} is not documented in docs/serving.md"
  # fetch only through call(), and call() only with a ROUTES entry.
  assert script.count("fetch(") == 1
  assert all(c.startswith("ROUTES.") for c in re.findall(r"\bcall\(([^,)]+)", script)[1:])
  html = open(os.path.join(page_dir, "index.html"), encoding="utf-8").read()
  for text in (script, html):
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), "the page loads from another host"
