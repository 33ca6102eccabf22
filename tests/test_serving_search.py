"""`:neighbors` from a pushed version's own search index (no --index): the
queries are embedded by that version and searched in its index; a hot
reload swaps model and index together; a version without an index, or with
a corrupt one, is answered or skipped with a clear error."""

import base64
import os
import shutil
import time

import numpy as np
import pytest
import requests

from models import search_index
from models.config import SearchConfig
from models.names import SEARCH_INDEX_DIR, SERVING_DEFAULT
from pipeline.runs import pipeline_inputs
from serving.launch import ServerProcess
from serving.model_store import LoadedModel, versions_on_disk
from tests.conftest import cifar10_class_names, export_random_classifier, png_bytes

# Starts server processes: `make test-fast` leaves this module out.
pytestmark = pytest.mark.server

NAME = "mae-tfx"


def SPAN_OF(row: int) -> str:  # pylint: disable=invalid-name
  """The span the test corpus puts its row-th image in (three spans)."""
  return str(1 + row % 3)


def _b64(data: bytes):
  return {"b64": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def corpus(cifar10_sample):
  """60 real train images: (PNG bytes, ids, class names)."""
  (images, labels), _ = cifar10_sample
  names = cifar10_class_names()
  return (
      [png_bytes(i) for i in images[:60]],
      [f"train/{i}" for i in range(60)],
      [names[int(label)] for label in labels[:60]],
  )


def add_index(version_dir: str, corpus, id_prefix: str = "") -> None:
  """Embeds the corpus with the version's own model and saves its index
  into the version folder, as the pipeline pushes it."""
  files, ids, class_names = corpus
  model = LoadedModel(0, version_dir)
  vectors = model.run(SERVING_DEFAULT, files)["embedding"]
  index = search_index.build(
      vectors,
      search_index.Records(
          [id_prefix + i for i in ids], class_names, [SPAN_OF(i) for i in range(len(ids))]
      ),
      SearchConfig(kind="exact", eval_queries=10),
      vectors[:10],
  )
  index.save(os.path.join(version_dir, SEARCH_INDEX_DIR))


def wait_for(server, version: int, state: str):
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    status = requests.get(f"{server.url}/v1/models/{NAME}", timeout=10).json()
    rows = {r["version"]: r for r in status["model_version_status"]}
    if rows.get(str(version), {}).get("state") == state:
      return rows[str(version)]
    time.sleep(0.2)
  pytest.fail(f"version {version} not {state} after 60 s: {status}")


@pytest.fixture(scope="module")
def indexed(model_base, corpus, tmp_path_factory):
  """A copy of the pushed versions whose newest carries an index of
  `corpus` (in place of the pipeline's), a copy of it one version older
  without one, and a server on them (no --index)."""
  base = str(tmp_path_factory.mktemp("indexed") / NAME)
  shutil.copytree(model_base, base)
  newest = versions_on_disk(base)[-1]
  shutil.rmtree(os.path.join(base, str(newest), SEARCH_INDEX_DIR), ignore_errors=True)
  shutil.copytree(os.path.join(base, str(newest)), os.path.join(base, str(newest - 1)))
  add_index(os.path.join(base, str(newest)), corpus)
  with ServerProcess(["--model-dir", base, "--poll-seconds", "0.3"]) as server:
    yield base, newest, server
  assert "Traceback" not in server.stderr, server.stderr


def neighbors(server, files, path=f"/v1/models/{NAME}", **body):
  return requests.post(
      f"{server.url}{path}:neighbors",
      json={"instances": [_b64(f) for f in files], **body},
      timeout=60,
  )


def by_ids(server, ids, path=f"/v1/models/{NAME}", **body):
  return requests.post(f"{server.url}{path}:neighbors", json={"ids": ids, **body}, timeout=60)


def _reference(base, newest, corpus, query_rows, passing, k):
  """Exact search on the index's own vectors: each query row's k nearest
  passing rows, itself left out."""
  index = search_index.load(os.path.join(base, str(newest), SEARCH_INDEX_DIR))
  vectors = search_index.unit(np.asarray(index.vectors, np.float32))
  sims = vectors[query_rows] @ vectors.T
  sims[:, ~passing] = -np.inf
  sims[np.arange(len(query_rows)), query_rows] = -np.inf
  order = np.argsort(-sims, axis=1)[:, :k]
  return [[corpus[1][r] for r in row if np.isfinite(s[r])] for row, s in zip(order, sims)]


def test_a_query_by_id_is_more_like_an_indexed_image(indexed, corpus):
  base, newest, server = indexed
  _, ids, _ = corpus
  r = by_ids(server, [ids[3], ids[41]], k=5)
  assert r.status_code == 200, r.text
  found = [[h["id"] for h in hits] for hits in r.json()["neighbors"]]
  everyone = np.ones(len(ids), bool)
  assert found == _reference(base, newest, corpus, [3, 41], everyone, 5)
  assert ids[3] not in found[0] and ids[41] not in found[1]  # left out of its own
  # An id the index does not hold is a 404 naming it; so is a removed one.
  r = by_ids(server, [ids[3], "span-9/nobody.png"])
  assert r.status_code == 404 and "'span-9/nobody.png'" in r.json()["error"], r.text
  r = requests.post(
      f"{server.url}/v1/models/{NAME}:neighbors",
      json={"ids": [ids[3]], "instances": [{"b64": "AAAA"}]},
      timeout=60,
  )
  assert r.status_code == 400 and "not both" in r.json()["error"]


def test_filters_return_the_k_nearest_that_pass_over_rest(indexed, corpus):
  """Allow and deny over class and span: every result passes, and they are
  the k nearest passing ones (exact search on the same vectors), k of them
  whenever k pass."""
  base, newest, server = indexed
  files, ids, class_names = corpus
  classes, spans = np.array(class_names), np.array([SPAN_OF(i) for i in range(len(ids))])
  cases = [
      ([{"namespace": "class", "allow": ["cat"]}], classes == "cat"),
      ([{"namespace": "span", "deny": ["1"]}], spans != "1"),
      (
          [
              {"namespace": "class", "allow": ["cat", "dog", "frog"]},
              {"namespace": "span", "allow": ["2", "3"], "deny": ["3"]},
          ],
          np.isin(classes, ["cat", "dog", "frog"]) & (spans == "2"),
      ),
  ]
  for restricts, passing in cases:
    assert 2 <= passing.sum() < len(ids) - 10, restricts
    query_rows = [int(np.flatnonzero(passing)[0]), int(np.flatnonzero(~passing)[0])]
    r = by_ids(server, [ids[q] for q in query_rows], k=10, restricts=restricts)
    assert r.status_code == 200, r.text
    hits = r.json()["neighbors"]
    for q, query_hits in zip(query_rows, hits):
      available = int(passing.sum()) - int(passing[q])
      assert len(query_hits) == min(10, available), (restricts, query_hits)
      for h in query_hits:
        row = ids.index(h["id"])
        assert passing[row] and h["span"] == spans[row] and h["class_name"] == classes[row]
    assert [[h["id"] for h in q] for q in hits] == _reference(
        base, newest, corpus, query_rows, passing, 10
    ), restricts
  # The same filters on image queries.
  r = neighbors(server, [files[0]], k=3, restricts=cases[0][0])
  assert r.status_code == 200 and all(h["class_name"] == "cat" for h in r.json()["neighbors"][0])


@pytest.mark.parametrize(
    "restricts,message",
    [
        ([{"namespace": "colour", "allow": ["red"]}], "unknown namespace 'colour'"),
        ([{"namespace": "span"}], "give 'allow' or 'deny'"),
        ({"namespace": "class", "allow": ["cat"]}, "must be a list"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(indexed, corpus, restricts, message):
  _, _, server = indexed
  r = by_ids(server, [corpus[1][0]], restricts=restricts)
  assert r.status_code == 400 and message in r.json()["error"], r.text


def test_metrics_give_latency_per_route_and_each_loaded_version(indexed, corpus):
  """`/monitoring/prometheus/metrics`, parsed by prometheus_client's own
  parser: request latency histograms by route and signature, and each
  loaded version's load time and size, with its index's vectors."""
  from prometheus_client.parser import text_string_to_metric_families

  _, newest, server = indexed
  files, ids, _ = corpus
  assert neighbors(server, files[:2], k=3).status_code == 200
  assert by_ids(server, ids[:1], k=3).status_code == 200
  r = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=60)
  assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
  families = {f.name: f for f in text_string_to_metric_families(r.text)}
  counts = {
      (s.labels["route"], s.labels["signature"]): s.value
      for s in families["mae_tfx_request_seconds"].samples
      if s.name.endswith("_count")
  }
  assert counts[("neighbors", "serving_default")] >= 1 and counts[("neighbors", "")] >= 1
  buckets = [
      s
      for s in families["mae_tfx_request_seconds"].samples
      if s.name.endswith("_bucket") and s.labels["route"] == "neighbors"
  ]
  assert {s.labels["le"] for s in buckets} >= {"0.005", "0.1", "+Inf"}
  by_version = {
      name: {s.labels["version"]: s.value for s in families[name].samples}
      for name in (
          "mae_tfx_model_load_seconds",
          "mae_tfx_model_size_bytes",
          "mae_tfx_index_vectors",
          "mae_tfx_index_size_bytes",
      )
  }
  assert by_version["mae_tfx_model_load_seconds"][str(newest)] > 0
  assert by_version["mae_tfx_model_size_bytes"][str(newest)] > 10_000
  assert by_version["mae_tfx_index_vectors"][str(newest)] == len(ids)
  assert by_version["mae_tfx_index_size_bytes"][str(newest)] > len(ids) * 16
  statuses = {s.labels["status"]: s.value for s in families["mae_tfx_responses"].samples}
  assert statuses["200"] >= 2


def test_a_corpus_image_finds_itself_first_in_the_versions_own_index(indexed, corpus):
  _, newest, server = indexed
  files, ids, class_names = corpus
  r = neighbors(server, [files[3], files[41]], k=5)
  assert r.status_code == 200, r.text
  body = r.json()
  assert body["model_version"] == str(newest) == r.headers["X-Model-Version"]
  for hits, i in zip(body["neighbors"], (3, 41)):
    assert len(hits) == 5 and set(hits[0]) == {"id", "class_name", "span", "score"}
    assert hits[0]["id"] == ids[i] and hits[0]["class_name"] == class_names[i]
    assert hits[0]["score"] >= 0.999
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
  # A threshold keeps only the neighbours at or above it (the same query
  # alone both times: a batch of one embeds it to the same last bit).
  alone = neighbors(server, [files[3]], k=5).json()["neighbors"][0]
  cut = alone[2]["score"]
  kept = neighbors(server, [files[3]], k=5, threshold=cut).json()["neighbors"][0]
  assert kept == [h for h in alone if h["score"] >= cut] and len(kept) >= 3
  # The version named in the URL answers from its own index.
  r = neighbors(server, [files[3]], path=f"/v1/models/{NAME}/versions/{newest}", k=1)
  assert r.json()["neighbors"][0][0]["id"] == ids[3]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"k": 0}, "'k' must be an integer in [1, 1000], got 0"),
        ({"k": "3"}, "'k' must be an integer in [1, 1000], got \"3\""),
        (
            {"threshold": 1.5},
            "'threshold' must be a number in [-1, 1] (a cosine similarity), got 1.5",
        ),
        ({"threshold": "high"}, "'threshold' must be a number in [-1, 1]"),
        ({"threshold": True}, "'threshold' must be a number in [-1, 1]"),
    ],
)
def test_bad_k_or_threshold_is_a_400_naming_it(indexed, corpus, body, message):
  _, _, server = indexed
  r = neighbors(server, corpus[0][:1], **body)
  assert r.status_code == 400 and message in r.json()["error"], r.text


def test_a_version_without_an_index_says_so(indexed, corpus):
  _, newest, server = indexed
  r = neighbors(server, corpus[0][:1], path=f"/v1/models/{NAME}/versions/{newest - 1}")
  assert r.status_code == 404
  assert r.json()["error"] == (
      f"version {newest - 1} of model '{NAME}' has no search index ({SEARCH_INDEX_DIR} in "
      "its folder); start the server with --index FILE to search an embeddings file "
      "instead"
  )


def test_a_hot_reload_swaps_model_and_index_together_and_a_corrupt_index_is_skipped(
    indexed, corpus, smoke_run, tmp_path
):
  import tensorflow_transform as tft

  base, newest, server = indexed
  files, ids, _ = corpus
  # A new model, its index built by it, pushed through a staging folder.
  staging = tmp_path / "staging"
  _, transform_graph = pipeline_inputs(smoke_run.metadata_path)
  export_random_classifier(tft.TFTransformOutput(transform_graph), staging, seed=11)
  add_index(str(staging), corpus, id_prefix="new/")
  os.rename(staging, os.path.join(base, str(newest + 1)))
  wait_for(server, newest + 1, "AVAILABLE")
  r = neighbors(server, [files[7]], k=3)
  body = r.json()
  assert body["model_version"] == str(newest + 1)
  assert body["neighbors"][0][0]["id"] == "new/" + ids[7]
  assert body["neighbors"][0][0]["score"] >= 0.999  # same model on both sides
  r = neighbors(server, [files[7]], path=f"/v1/models/{NAME}/versions/{newest}", k=1)
  assert r.json()["neighbors"][0][0]["id"] == ids[7]  # the old pair, still together
  # A version whose index is cut short is skipped, naming why; the last good
  # version keeps answering.
  broken = os.path.join(base, str(newest + 2))
  shutil.copytree(os.path.join(base, str(newest + 1)), tmp_path / "broken")
  vectors = tmp_path / "broken" / SEARCH_INDEX_DIR / "vectors.npy"
  vectors.write_bytes(vectors.read_bytes()[:100])
  os.rename(tmp_path / "broken", broken)
  row = wait_for(server, newest + 2, "END")
  assert "not a readable search index" in row["status"]["error_message"]
  assert SEARCH_INDEX_DIR in row["status"]["error_message"]
  r = neighbors(server, [files[7]], k=1)
  assert r.status_code == 200 and r.json()["model_version"] == str(newest + 1)


def test_search_index_and_duplicates_routes(indexed, corpus):
  """What the search page reads: the index's size and filter tokens, and
  its near-duplicate groups, the same as `serving.duplicates` finds over
  the version's own vectors and projection; paged, and as CSV."""
  from serving import duplicates

  base, newest, server = indexed
  _, ids, class_names = corpus
  info = requests.get(
      f"{server.url}/v1/models/{NAME}/versions/{newest}/search_index", timeout=60
  ).json()
  assert info["model_version"] == str(newest) and info["count"] == len(ids)
  assert {c["name"]: c["count"] for c in info["classes"]} == {
      c: class_names.count(c) for c in set(class_names)
  }
  assert [s["name"] for s in info["spans"]] == ["1", "2", "3"]
  model = LoadedModel(newest, os.path.join(base, str(newest)))
  projection, threshold = model.duplicate_projection()
  assert info["duplicate_threshold"] == threshold
  assert info["duplicate_projection"] == (projection is not None)
  expected = duplicates.corpus_groups(
      model.index.vectors, model.index.records, projection, threshold, newest
  )
  url = f"{server.url}/v1/models/{NAME}/versions/{newest}/duplicates"
  every = requests.get(url, params={"limit": 0}, timeout=60).json()
  assert every["groups_total"] == len(expected) and every["images"] == len(ids)
  assert [[i["id"] for i in g["items"]] for g in every["groups"]] == [
      [ids[r] for r in g.rows] for g in expected
  ]
  page = requests.get(url, params={"offset": 1, "limit": 1}, timeout=60).json()
  assert page["groups"] == every["groups"][1:2]
  csv_text = requests.get(url, params={"format": "csv"}, timeout=60)
  assert csv_text.headers["Content-Disposition"].startswith("attachment")
  assert csv_text.text == duplicates.groups_text(expected, model.index.records)
  for params, message in (
      ({"format": "xml"}, "'format' must be json or csv"),
      ({"offset": "-1"}, "'offset' must be a whole number"),
  ):
    r = requests.get(url, params=params, timeout=60)
    assert r.status_code == 400 and message in r.json()["error"], r.text
  r = requests.get(f"{server.url}/v1/models/{NAME}/versions/{newest - 1}/duplicates", timeout=60)
  assert r.status_code == 404 and "has no search index" in r.json()["error"]
