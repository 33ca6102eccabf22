"""The embedding server (a real process on loopback), batch embedding and
similarity search, on the model the smoke pipeline pushed."""

import base64
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from components.versioned_pusher import push_to_filesystem
from models import names
from pipeline.runs import pipeline_inputs
from serving import embed, search
from serving.embeddings import EmbeddingsFile
from serving.launch import ServerProcess
from serving.model_store import versions_on_disk
from tests.conftest import (cifar10_class_names, export_random_classifier, jpeg_bytes, png_bytes)

# Starts server processes: `make test-fast` leaves this module out.
pytestmark = pytest.mark.server

NAME = "mae-tfx"


def _b64(data: bytes) -> dict:
  return {"b64": base64.b64encode(data).decode()}


def _saved_model_embeddings(version_dir, images):
  serve = tf.saved_model.load(version_dir).signatures["serving_default"]
  return serve(image_bytes=tf.constant(images))["embedding"].numpy()


@pytest.fixture(scope="module")
def image_folder(cifar10_sample, tmp_path_factory):
  """40 real test images as PNG files in <label>/ sub-folders."""
  _, (images, labels) = cifar10_sample
  root = tmp_path_factory.mktemp("images")
  for i, (image, label) in enumerate(zip(images[:40], labels[:40])):
    os.makedirs(root / f"class{label}", exist_ok=True)
    (root / f"class{label}" / f"{i:03d}.png").write_bytes(png_bytes(image))
  return str(root)


@pytest.fixture(scope="module")
def index_file(model_base, image_folder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("index") / "images.npz")
  embed.main(["--model-dir", model_base, "--images", image_folder, "--out", out, "--no-progress"])
  return out


@pytest.fixture(scope="module")
def server(model_base, index_file):
  # float32: what is compared with the SavedModel is serving_default as saved.
  with ServerProcess(
      [
          "--model-dir",
          model_base,
          "--poll-seconds",
          "0.5",
          "--max-body-mb",
          "1",
          "--index",
          index_file,
          "--precision",
          "float32",
      ]
  ) as s:
    yield s
  assert "Traceback" not in s.stderr, s.stderr


# ---- batch embedding and search (CLIs) -----------------------------------
def test_embed_folder_keeps_ids_labels_and_equals_the_saved_model(
    model_base, image_folder, index_file
):
  table = EmbeddingsFile.load(index_file)
  version = versions_on_disk(model_base)[-1]
  assert table.model_version == version and len(table.ids) == 40
  assert all(label == path.split(os.sep)[0] for path, label in zip(table.ids, table.labels))
  files = [open(os.path.join(image_folder, i), "rb").read() for i in table.ids[:8]]
  expected = _saved_model_embeddings(os.path.join(model_base, str(version)), files)
  np.testing.assert_allclose(table.embeddings[:8], expected, atol=1e-5)


def test_embed_split_of_the_pipeline_examples(smoke_run, model_base, cifar10_sample, tmp_path):
  out = str(tmp_path / "test.npz")
  printed = subprocess.run(
      [sys.executable, "-m", "pipeline.runs", "--examples", "--output-dir", smoke_run.output_dir],
      cwd=names.PROJECT_DIR,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.strip()
  examples, _ = pipeline_inputs(smoke_run.metadata_path)
  assert printed == examples
  table = embed.main(
      [
          "--model-dir",
          model_base,
          "--examples",
          printed,
          "--split",
          "test",
          "--out",
          out,
          "--no-progress",
      ]
  )
  _, (images, labels) = cifar10_sample
  assert list(table.ids[:2]) == ["test/0", "test/1"] and len(table.ids) == 100
  assert sorted(table.labels.astype(int)) == sorted(labels)
  assert os.path.isfile(out) and table.meta["signature"] == "embed_examples"
  assert table.meta["source"] == names.split_dir(examples, "test")
  with pytest.raises(SystemExit, match=r"no split 'validation'; its splits: \['test', 'train'\]"):
    embed.main(
        [
            "--model-dir",
            model_base,
            "--examples",
            printed,
            "--split",
            "validation",
            "--out",
            out,
            "--no-progress",
        ]
    )


def test_embed_names_a_bad_image_and_writes_nothing(model_base, image_folder, tmp_path):
  folder = tmp_path / "imgs"
  shutil.copytree(image_folder, folder)
  (folder / "class3" / "broken.png").write_bytes(b"this is not a png")
  out = str(tmp_path / "out.npz")
  with pytest.raises(embed.BadImages, match=r"class3/broken\.png: .*image"):
    embed.main(["--model-dir", model_base, "--images", str(folder), "--out", out, "--no-progress"])
  assert not os.path.exists(out) and os.listdir(tmp_path) == ["imgs"]
  table = embed.main(
      [
          "--model-dir",
          model_base,
          "--images",
          str(folder),
          "--out",
          out,
          "--no-progress",
          "--skip-bad",
      ]
  )
  assert len(table.ids) == 40 and table.meta["skipped"] == 1


def test_search_cli_finds_the_query_itself_first(model_base, image_folder, index_file):
  table = EmbeddingsFile.load(index_file)
  query = os.path.join(image_folder, table.ids[5])
  results = search.main(["--embeddings", index_file, "--model-dir", model_base, "-k", "3", query])
  hits = results[query]
  assert len(hits) == 3 and hits[0]["id"] == table.ids[5]
  assert hits[0]["score"] >= 0.999 and hits[0]["score"] >= hits[1]["score"]


# ---- the server ------------------------------------------------------------
def test_status_and_metadata(server, model_base):
  version = str(versions_on_disk(model_base)[-1])
  status = requests.get(f"{server.url}/v1/models/{NAME}").json()
  assert status["model_version_status"][0] == {
      "version": version,
      "state": "AVAILABLE",
      "status": {"error_code": "OK", "error_message": ""},
  }
  meta = requests.get(f"{server.url}/v1/models/{NAME}/versions/{version}/metadata").json()
  sigs = meta["metadata"]["signature_def"]
  assert set(sigs) == {
      "serving_default",
      "serving_bfloat16",
      "embed_examples",
      "classify_examples",
      "classify_examples_bfloat16",
  }
  assert sigs["serving_default"]["inputs"] == {"image_bytes": {"dtype": "string", "shape": [None]}}


def test_predict_png_and_jpeg_equal_the_saved_model(server, model_base, cifar10_sample):
  _, (images, _) = cifar10_sample
  files = (
      [png_bytes(i) for i in images[:4]]
      + [jpeg_bytes(i) for i in images[4:7]]
      + [jpeg_bytes(images[7], size=(57, 41))]
  )  # any size is resized
  version = str(versions_on_disk(model_base)[-1])
  expected = _saved_model_embeddings(os.path.join(model_base, version), files)
  body = {"instances": [_b64(f) for f in files]}
  for path in (f"/v1/models/{NAME}:predict", f"/v1/models/{NAME}/versions/{version}:predict"):
    r = requests.post(server.url + path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == version
    np.testing.assert_allclose(np.array(r.json()["predictions"]), expected, atol=1e-5)
  # Named instances and the columnar format, as TF Serving accepts them.
  named = requests.post(
      f"{server.url}/v1/models/{NAME}:predict",
      json={"instances": [{"image_bytes": _b64(f)} for f in files[:2]]},
  ).json()
  columnar = requests.post(
      f"{server.url}/v1/models/{NAME}:predict",
      json={"inputs": {"image_bytes": [_b64(f) for f in files[:2]]}},
  ).json()
  np.testing.assert_allclose(named["predictions"], expected[:2], atol=1e-5)
  np.testing.assert_allclose(columnar["outputs"], expected[:2], atol=1e-5)


def test_classify_returns_probabilities_and_class_names(server, model_base, cifar10_sample):
  _, (images, _) = cifar10_sample
  examples = [
      tf.train.Example(
          features=tf.train.Features(
              feature={
                  "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(i)]))
              }
          )
      ).SerializeToString()
      for i in images[:3]
  ]
  version = str(versions_on_disk(model_base)[-1])
  expected = tf.saved_model.load(os.path.join(model_base, version)).signatures["classify_examples"](
      examples=tf.constant(examples)
  )
  response = requests.post(
      f"{server.url}/v1/models/{NAME}:predict",
      json={"signature_name": "classify_examples", "instances": [_b64(e) for e in examples]},
  ).json()
  predictions = response["predictions"]
  assert [p["class_name"] for p in predictions] == [
      c.decode() for c in expected["class_name"].numpy()
  ]
  assert set(p["class_name"] for p in predictions) <= set(cifar10_class_names())
  np.testing.assert_allclose(
      [p["probabilities"] for p in predictions], expected["probabilities"].numpy(), atol=1e-6
  )


def _calls_and_instances(server):
  text = requests.get(f"{server.url}/monitoring/prometheus/metrics").text
  values = dict(
      line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("mae_tfx_model")
  )
  return (
      int(float(values["mae_tfx_model_calls_total"])),
      int(float(values["mae_tfx_model_instances_total"])),
  )


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(
    server, model_base, cifar10_sample
):
  _, (images, _) = cifar10_sample
  files = [png_bytes(i) for i in images[:32]]
  expected = _saved_model_embeddings(
      os.path.join(model_base, str(versions_on_disk(model_base)[-1])), files
  )
  bodies = [{"instances": [_b64(f)]} for f in files]
  bodies[13] = {"instances": [_b64(b"GIF89a but not really")]}
  calls0, instances0 = _calls_and_instances(server)
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    responses = list(
        pool.map(
            lambda b: requests.post(f"{server.url}/v1/models/{NAME}:predict", json=b), bodies * 4
        )
    )
  for i, r in enumerate(responses):
    if i % 32 == 13:
      assert r.status_code == 400 and "instances[0]" in r.json()["error"], r.text
    else:
      assert r.status_code == 200, r.text
      np.testing.assert_allclose(r.json()["predictions"][0], expected[i % 32], atol=1e-5)
  calls, instances = _calls_and_instances(server)
  good_calls = calls - calls0
  # 124 good + 4 bad single-image requests: merged calls (plus the re-runs that
  # isolate each bad request) must be fewer than one per request.
  assert instances - instances0 >= 128 and good_calls < 128, (good_calls, instances)


def test_a_request_bigger_than_a_model_call_is_cut_and_bad_instances_keep_their_index(
    server, model_base, cifar10_sample
):
  _, (images, _) = cifar10_sample
  files = [png_bytes(i) for i in images[:50]] * 3  # 150 > --max-batch 64
  expected = _saved_model_embeddings(
      os.path.join(model_base, str(versions_on_disk(model_base)[-1])), files[:50]
  )
  calls0, _ = _calls_and_instances(server)
  r = requests.post(
      f"{server.url}/v1/models/{NAME}:predict", json={"instances": [_b64(f) for f in files]}
  )
  assert r.status_code == 200, r.text
  np.testing.assert_allclose(r.json()["predictions"], np.concatenate([expected] * 3), atol=1e-5)
  assert _calls_and_instances(server)[0] - calls0 == 3  # 64 + 64 + 22
  bad = [_b64(f) for f in files]
  bad[10] = bad[140] = _b64(b"not an image")  # in the first and last call
  r = requests.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": bad})
  assert r.status_code == 400, r.text
  assert "instances[10]" in r.json()["error"] and "instances[140]" in r.json()["error"]


@pytest.mark.parametrize(
    "path,body,status,message",
    [
        (":predict", b"{not json", 400, "not valid JSON"),
        (":predict", b"[1, 2]", 400, "must be a JSON object"),
        (":predict", {"signature": "x"}, 400, "no 'instances' field"),
        (":predict", {"instances": []}, 400, "non-empty list"),
        (":predict", {"instances": ["abc"]}, 400, 'instances[0]: expected {"b64"'),
        (
            ":predict",
            {"instances": [{"b64": "@@not base64@@"}]},
            400,
            "instances[0].b64 is not valid base64",
        ),
        (
            ":predict",
            {"instances": [{"b64": base64.b64encode(b"plain text").decode()}]},
            400,
            "instances[0]: ",
        ),
        (
            ":predict",
            {"signature_name": "classify", "instances": [{"b64": "AA=="}]},
            400,
            "signature 'classify' not found",
        ),
        ("/versions/1:predict", {"instances": [{"b64": "AA=="}]}, 404, "version 1 of model"),
        (
            "/versions/latest:predict",
            {"instances": [{"b64": "AA=="}]},
            404,
            "versions are integers",
        ),
        (":classify", {"instances": [{"b64": "AA=="}]}, 404, "no route POST"),
        (":neighbors", {"instances": [{"b64": "AA=="}], "k": 0}, 400, "'k' must be an integer"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(server, path, body, status, message):
  url = f"{server.url}/v1/models/{NAME}{path}"
  r = requests.post(url, data=body) if isinstance(body, bytes) else requests.post(url, json=body)
  assert r.status_code == status, r.text
  assert message in r.json()["error"]


def test_unknown_model_oversize_body_and_wrong_method(server, cifar10_sample):
  r = requests.post(f"{server.url}/v1/models/resnet:predict", json={"instances": []})
  assert r.status_code == 404 and "model 'resnet' not found" in r.json()["error"]
  big = {"instances": [{"b64": "A" * (2 << 20)}]}  # > --max-body-mb 1
  r = requests.post(f"{server.url}/v1/models/{NAME}:predict", json=big)
  assert r.status_code == 413 and "exceeded" in r.json()["error"]
  r = requests.get(f"{server.url}/v1/models/{NAME}:predict")
  assert r.status_code == 405
  # ... and it still serves.
  _, (images, _) = cifar10_sample
  r = requests.post(
      f"{server.url}/v1/models/{NAME}:predict", json={"instances": [_b64(png_bytes(images[0]))]}
  )
  assert r.status_code == 200


def test_neighbors_endpoint_matches_the_search_cli(server, model_base, image_folder, index_file):
  table = EmbeddingsFile.load(index_file)
  queries = [os.path.join(image_folder, table.ids[i]) for i in (2, 9)]
  r = requests.post(
      f"{server.url}/v1/models/{NAME}:neighbors",
      json={"k": 4, "instances": [_b64(open(q, "rb").read()) for q in queries]},
  )
  assert r.status_code == 200, r.text
  body = r.json()
  assert body["model_version"] == str(table.model_version)
  cli = search.main(["--embeddings", index_file, "--model-dir", model_base, "-k", "4", *queries])
  for query, hits in zip(queries, body["neighbors"]):
    assert [h["id"] for h in hits] == [h["id"] for h in cli[query]]
    np.testing.assert_allclose(
        [h["score"] for h in hits], [h["score"] for h in cli[query]], atol=1e-5
    )
    assert all(h["class_name"] == h["id"].split("/")[0] for h in hits)


def test_a_newly_pushed_version_is_served_without_restart(
    server, model_base, smoke_run, cifar10_sample, tmp_path
):
  import tensorflow_transform as tft

  old = versions_on_disk(model_base)[-1]
  export = tmp_path / "export"
  _, transform_graph = pipeline_inputs(smoke_run.metadata_path)
  export_random_classifier(tft.TFTransformOutput(transform_graph), export, seed=7)
  new = push_to_filesystem(str(export), model_base)  # the Pusher's own push
  assert int(new) > old
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    status = requests.get(f"{server.url}/v1/models/{NAME}").json()["model_version_status"]
    if status[0]["version"] == new and status[0]["state"] == "AVAILABLE":
      break
    time.sleep(0.2)
  else:
    pytest.fail(f"version {new} not served after 60 s: {status}")
  _, (images, _) = cifar10_sample
  files = [png_bytes(i) for i in images[:3]]
  r = requests.post(
      f"{server.url}/v1/models/{NAME}:predict", json={"instances": [_b64(f) for f in files]}
  )
  assert r.headers["X-Model-Version"] == new
  np.testing.assert_allclose(
      r.json()["predictions"], _saved_model_embeddings(str(export), files), atol=1e-5
  )
  # The previous version stays reachable by number.
  r = requests.post(
      f"{server.url}/v1/models/{NAME}/versions/{old}:predict",
      json={"instances": [_b64(f) for f in files]},
  )
  np.testing.assert_allclose(
      r.json()["predictions"],
      _saved_model_embeddings(os.path.join(model_base, str(old)), files),
      atol=1e-5,
  )
