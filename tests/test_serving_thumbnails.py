"""`GET /v1/models/<name>[/versions/<v>]/thumbnails/<id>`: a real server on
the smoke run's pushed versions serves the pipeline's thumbnails by id, the
id raw or percent-encoded, with caching headers, and a clear 404 where
there is none."""

import io
import os
import shutil
import urllib.parse

import numpy as np
import pytest
import requests
from PIL import Image

from models import search_index, thumbnails
from models.names import PIPELINE_NAME, SEARCH_INDEX_DIR
from serving.launch import ServerProcess
from serving.model_store import versions_on_disk

# Starts a server process: `make test-fast` leaves this module out.
pytestmark = pytest.mark.server

NAME = PIPELINE_NAME
# Ids an image folder can give (a file's path under its root), in place of
# the first rows' `train/<n>`: the last one's image has no thumbnail.
ODD_IDS = ("span-1/train/3", "span-1/chat noir/été 1.png", "100%/a#b?c+d.png", "span-2/none.png")


def _link_version(source: str, target: str) -> None:
  """A pushed version's SavedModel at `target` (hard links), without its index."""
  shutil.copytree(
      source,
      target,
      copy_function=os.link,
      ignore=lambda folder, _: ["search_index"] if folder.endswith("assets.extra") else [],
  )


def _add_odd_index(version_dir: str, pipeline_index_dir: str) -> None:
  """The pipeline's index and thumbnails saved into `version_dir` with its
  first rows renamed to ODD_IDS, the last of them without a thumbnail."""
  index = search_index.load(pipeline_index_dir)
  ids = list(index.records.ids)
  ids[: len(ODD_IDS)] = ODD_IDS
  index.records = search_index.Records(ids, index.records.class_names, index.records.spans)
  folder = os.path.join(version_dir, SEARCH_INDEX_DIR)
  index.save(folder)
  store = thumbnails.ThumbnailStore.load(pipeline_index_dir)
  jpegs = store.select(range(len(store)))
  jpegs[len(ODD_IDS) - 1] = b""
  thumbnails.write(folder, jpegs)


@pytest.fixture(scope="module")
def served(model_base):
  """The pushed versions and three made from the newest (`pushed`):
  pushed + 1, its model with an index of ODD_IDS (the newest, served by
  default); oldest - 1, its index without thumbnails; oldest - 2, no index.
  Yields (pushed, server)."""
  versions = versions_on_disk(model_base)
  pushed, oldest = versions[-1], versions[0]
  pushed_dir = os.path.join(model_base, str(pushed))
  pushed_index = os.path.join(pushed_dir, SEARCH_INDEX_DIR)
  _link_version(pushed_dir, os.path.join(model_base, str(pushed + 1)))
  _add_odd_index(os.path.join(model_base, str(pushed + 1)), pushed_index)
  no_thumbnails = os.path.join(model_base, str(oldest - 1))
  _link_version(pushed_dir, no_thumbnails)
  shutil.copytree(
      pushed_index,
      os.path.join(no_thumbnails, SEARCH_INDEX_DIR),
      ignore=shutil.ignore_patterns(thumbnails.DATA_FILE, thumbnails.OFFSETS_FILE),
  )
  _link_version(pushed_dir, os.path.join(model_base, str(oldest - 2)))
  with ServerProcess(["--model-dir", model_base]) as server:
    yield pushed, server
  assert "Traceback" not in server.stderr, server.stderr


def _get(server, path: str, **headers) -> requests.Response:
  return requests.get(server.url + path, headers=headers, timeout=60)


def _url(image_id: str, version=None, safe: str = "/") -> str:
  """The thumbnail route of `image_id`, percent-encoded but for `safe`."""
  prefix = f"/v1/models/{NAME}" + (f"/versions/{version}" if version is not None else "")
  return f"{prefix}/thumbnails/{urllib.parse.quote(image_id, safe=safe)}"


def _pixels(jpeg: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(jpeg)) as image:
    assert image.format == "JPEG"
    return np.asarray(image, int)


def test_a_versioned_thumbnail_is_the_pipelines_and_cached_for_good(served, model_base):
  """The pushed version's own store: the row of the id, as the pipeline
  wrote it, the picture of the corpus image; immutable, 304 on its ETag."""
  pushed, server = served
  index_dir = os.path.join(model_base, str(pushed), SEARCH_INDEX_DIR)
  store = thumbnails.ThumbnailStore.load(index_dir)
  ids = list(search_index.read_records(index_dir).ids)
  for image_id in ("train/0", "train/17", ids[-1]):
    r = _get(server, _url(image_id, pushed))
    assert r.status_code == 200, r.text
    assert r.content == store[ids.index(image_id)]
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.headers["X-Model-Version"] == str(pushed)
    assert _pixels(r.content).shape == (32, 32, 3)
  etag = r.headers["ETag"]
  again = _get(server, _url(ids[-1], pushed), **{"If-None-Match": etag})
  assert again.status_code == 304 and not again.content and again.headers["ETag"] == etag
  assert again.headers["Cache-Control"] == "public, max-age=31536000, immutable"
  other = _get(server, _url(ids[-1], pushed), **{"If-None-Match": '"another"'})
  assert other.status_code == 200 and other.content == r.content


@pytest.mark.parametrize("safe", ["/", ""], ids=["raw-slashes", "percent-encoded-slashes"])
def test_an_id_holding_slashes_spaces_and_unicode_is_found_either_way(served, model_base, safe):
  """The newest version (ODD_IDS) through the unversioned route: "/" as
  it is or as %2F; spaces, "é", "%", "#", "?", "+" percent-encoded."""
  pushed, server = served
  store = thumbnails.ThumbnailStore.load(os.path.join(model_base, str(pushed), SEARCH_INDEX_DIR))
  for row, image_id in enumerate(ODD_IDS[:-1]):
    r = _get(server, _url(image_id, safe=safe))
    assert r.status_code == 200, (image_id, r.text)
    assert r.content == store[row] and r.headers["X-Model-Version"] == str(pushed + 1)
    # It may change with the next version: revalidated, 304 while it has not.
    assert r.headers["Cache-Control"] == "no-cache"
    again = _get(server, _url(image_id, safe=safe), **{"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.headers["X-Model-Version"] == str(pushed + 1)
  # The brief's example, typed into a browser as it is.
  assert requests.get(f"{server.url}/v1/models/{NAME}/thumbnails/span-1/train/3", timeout=60).ok
  # The same JPEG has the same ETag in another version (a hash of it), so a
  # new version that reuses it is answered with 304.
  pushed_ids = search_index.read_records(
      os.path.join(model_base, str(pushed), SEARCH_INDEX_DIR)
  ).ids
  newest = _get(server, _url(ODD_IDS[1])).headers["ETag"]
  assert newest == _get(server, _url(pushed_ids[1], pushed)).headers["ETag"]


def test_no_thumbnail_is_a_404_naming_the_id_and_version(served):
  pushed, server = served
  newest = pushed + 1
  cases = [
      (_url("train/99999"), f"id 'train/99999' not in the search index of version {newest}"),
      (_url("train/0", pushed, safe="") + "%20", "'train/0 ' not in the search index"),
      (_url(ODD_IDS[-1]), f"id '{ODD_IDS[-1]}' has no thumbnail in version {newest}"),
  ]
  for path, message in cases:
    r = _get(server, path)
    assert r.status_code == 404 and message in r.json()["error"], (path, r.text)
  # A version without an index, and one whose index has no thumbnails.
  status = _get(server, f"/v1/models/{NAME}").json()["model_version_status"]
  oldest = min(int(v["version"]) for v in status)
  r = _get(server, _url("train/0", oldest))
  assert r.status_code == 404, r.text
  assert r.json()["error"] == (
      f"version {oldest} of model '{NAME}' has no search index "
      f"({SEARCH_INDEX_DIR} in its folder), so no thumbnails"
  )
  r = _get(server, _url("train/0", oldest + 1))
  assert r.status_code == 404 and "search.thumbnail_px 0" in r.json()["error"], r.text
  assert f"version {oldest + 1} of model '{NAME}' has no thumbnails" in r.json()["error"]
