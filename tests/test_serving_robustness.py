"""The embedding server under load and attack (a real process on loopback,
the smoke pipeline's pushed model): load shedding, a soak with a push in the
middle, fuzzed requests, graceful SIGTERM, and what it does with no loadable
model. Bounded in count and time; `benchmarks/serving_soak.py` runs the soak
longer."""

import base64
import concurrent.futures
import json
import os
import shutil
import signal
import threading
import time

import grpc
import pytest
import requests
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.serving_soak import answered_by, rss_mb, soak
from components.versioned_pusher import push_to_filesystem
from pipeline.runs import pipeline_inputs
from tensorflow_serving.apis import prediction_service_pb2_grpc
from serving.grpc_api import predict_request
from serving.launch import ServerProcess
from serving.model_store import versions_on_disk
from tests.conftest import export_random_classifier, png_bytes

# Starts server processes: `make test-fast` leaves this module out.
pytestmark = pytest.mark.server

NAME = "mae-tfx"


def _instances(images):
  return [{"b64": base64.b64encode(png_bytes(i)).decode()} for i in images]


def _metric(url: str, name: str) -> float:
  text = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=10).text
  return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def test_images(cifar10_sample):
  _, (images, _) = cifar10_sample
  return images


def test_overload_is_shed_with_503_and_retry_after(model_base, test_images):
  with ServerProcess(
      ["--model-dir", model_base, "--max-batch", "8", "--max-queued", "8"]
  ) as server:
    body = {"instances": _instances(test_images[:8])}

    def post(_):
      r = requests.post(f"{server.url}/v1/models/{NAME}:predict", json=body, timeout=60)
      return r.status_code, r.headers.get("Retry-After"), r.json()

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
      results = list(pool.map(post, range(96)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    shed = [(retry, reply) for s, retry, reply in results if s == 503]
    assert shed, "32 concurrent requests over a bound of one request were all queued"
    assert all(int(retry) >= 1 and "overloaded" in reply["error"] for retry, reply in shed)
    assert all(len(reply["predictions"]) == 8 for s, _, reply in results if s == 200)
    assert _metric(server.url, "mae_tfx_shed_requests_total") == len(shed)
    assert _metric(server.url, 'mae_tfx_responses_total{status="503"}') == len(shed)
    # A request larger than the bound can never be queued: a 400 that says so.
    r = requests.post(
        f"{server.url}/v1/models/{NAME}:predict",
        json={"instances": _instances(test_images[:9])},
        timeout=60,
    )
    assert r.status_code == 400 and "at most 8" in r.json()["error"]


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(model_base, test_images):
  with ServerProcess(["--model-dir", model_base, "--drain-seconds", "20"]) as server:
    url = server.url
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    one = predict_request(NAME, [png_bytes(test_images[0])])
    stub.Predict(one, timeout=60)  # connected
    calls = _metric(url, "mae_tfx_model_calls_total")
    reply = {}
    big = {"instances": _instances(list(test_images) * 5)}  # 500 images

    def post():
      reply["response"] = requests.post(f"{url}/v1/models/{NAME}:predict", json=big, timeout=60)

    client = threading.Thread(target=post)
    client.start()
    deadline = time.monotonic() + 30
    while _metric(url, "mae_tfx_model_calls_total") == calls:  # the call started
      assert time.monotonic() < deadline
      time.sleep(0.02)
    # A gRPC request queued behind it: in flight too.
    queued = stub.Predict.future(
        predict_request(NAME, [png_bytes(i) for i in test_images[:8]]), timeout=60
    )
    while (
        _metric(url, "mae_tfx_model_calls_total") < calls + 2  # running beside it
        and _metric(url, "mae_tfx_queued_instances") < 8
    ):  # or queued
      assert time.monotonic() < deadline
      time.sleep(0.02)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(requests.ConnectionError):
      requests.get(f"{url}/v1/models/{NAME}", timeout=5)
    with pytest.raises(grpc.RpcError) as refused:
      stub.Predict(one, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    client.join(60)
    assert reply["response"].status_code == 200
    assert len(reply["response"].json()["predictions"]) == 500
    assert tf.make_ndarray(queued.result().outputs["embedding"]).shape[0] == 8
    channel.close()
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - start < 20
  assert "Traceback" not in server.stderr


def test_the_server_refuses_to_start_with_no_loadable_version(tmp_path):
  empty = tmp_path / "empty" / NAME
  empty.mkdir(parents=True)
  with pytest.raises(RuntimeError, match="no numeric version folder with a saved_model.pb"):
    with ServerProcess(["--model-dir", str(empty)], timeout_seconds=60):
      pass
  broken = tmp_path / "broken" / NAME / "5"
  broken.mkdir(parents=True)
  (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
  with pytest.raises(RuntimeError, match="version 5 failed to load"):
    with ServerProcess(["--model-dir", str(broken.parent)], timeout_seconds=60):
      pass


def test_soak_with_a_push_in_the_middle(model_base, test_images, smoke_run, tmp_path):
  import tensorflow_transform as tft

  export = tmp_path / "export"  # another model, pushed while clients run
  _, transform_graph = pipeline_inputs(smoke_run.metadata_path)
  export_random_classifier(tft.TFTransformOutput(transform_graph), export, seed=11)
  with ServerProcess(["--model-dir", model_base, "--poll-seconds", "0.5"]) as server:
    pushed = []

    def push():  # the Pusher's own push
      pushed.append(push_to_filesystem(str(export), model_base))

    pngs = [png_bytes(i) for i in test_images[:2]]
    outcome = soak(  # until the pushed version answers: it loads slower on a busy machine
        server.url,
        pngs,
        seconds=10,
        clients=6,
        on_half=push,
        until=answered_by(pushed),
        most_seconds=90,
    )
    results = outcome["results"]
    assert outcome["dropped"] == 0
    assert not [s for s, _, _, _ in results if s >= 500]
    assert all(s == 200 for s, _, _, good in results if good)
    assert all(s == 400 for s, _, _, good in results if not good)
    versions = {v for s, v, _, good in results if good}
    assert versions <= {str(v) for v in versions_on_disk(model_base)}
    assert pushed[0] in versions, "the pushed version never served a request"
    # Memory settles: a second soak after the push adds little.
    rss = rss_mb(server.process.pid)
    soak(server.url, pngs, seconds=6, clients=6)
    assert rss_mb(server.process.pid) < rss + 100


def test_a_pushed_version_that_fails_to_load_leaves_the_last_good_one_serving(
    model_base, test_images
):
  with ServerProcess(["--model-dir", model_base, "--poll-seconds", "0.3"]) as server:
    good = versions_on_disk(model_base)[-1]
    broken = os.path.join(model_base, str(good + 1000))
    os.makedirs(broken)
    try:
      with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"a copy cut short")
      deadline = time.monotonic() + 30
      while True:
        status = requests.get(f"{server.url}/v1/models/{NAME}", timeout=10).json()
        newest = status["model_version_status"][0]
        if newest["version"] == str(good + 1000) and newest["state"] == "END":
          break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
      assert newest["status"]["error_message"]  # why it failed, for the operator
      r = requests.post(
          f"{server.url}/v1/models/{NAME}:predict",
          json={"instances": _instances(test_images[:2])},
          timeout=60,
      )
      assert r.status_code == 200 and r.headers["X-Model-Version"] == str(good)
    finally:
      shutil.rmtree(broken)
  assert "Traceback" not in server.stderr


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        [
            f"/v1/models/{NAME}:predict",
            f"/v1/models/{NAME}:neighbors",
            f"/v1/models/{NAME}/versions/1:predict",
            f"/v1/models/{NAME}/metadata",
            "/v1/models/x:predict",
        ]
    )
    | st.text(min_size=1, max_size=40).map(lambda s: "/" + s),
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["instances", "inputs", "b64", "k", "signature_name", "image_bytes"])
            | st.text(max_size=8),
            children,
            max_size=4,
        ),
        max_leaves=12,
    )
    | st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "text/plain", "", "\x00"]),
    method=st.sampled_from(["POST", "GET", "PUT"]),
)
def test_fuzzed_requests_get_no_5xx_and_no_traceback(fuzz_server, path, body, content_type, method):
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  try:
    r = requests.request(
        method,
        fuzz_server.url + path,
        data=data,
        headers={"Content-Type": content_type},
        timeout=30,
    )
  except requests.exceptions.InvalidURL:
    return  # the client refuses to send it
  assert r.status_code < 500, (r.status_code, r.text[:300])
  assert "Traceback" not in r.text


@pytest.fixture(scope="module")
def fuzz_server(model_base):
  with ServerProcess(["--model-dir", model_base]) as server:
    yield server
  assert "Traceback" not in server.stderr, server.stderr[-3000:]
