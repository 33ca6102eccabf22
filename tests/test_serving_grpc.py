"""TF Serving's gRPC API of the embedding server (a real process on
loopback), called through TF Serving's own stubs and messages
(`tensorflow-serving-api`), on the model the smoke pipeline pushed."""

import base64
import concurrent.futures
import os

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving import grpc_api
from serving.launch import ServerProcess
from serving.model_store import versions_on_disk
from tests.conftest import cifar10_class_names, png_bytes
from tests.test_signatures import BFLOAT16_COSINE_FLOOR, cosines

# Starts server processes: `make test-fast` leaves this module out.
pytestmark = pytest.mark.server

NAME = "mae-tfx"


@pytest.fixture(scope="module")
def pngs(cifar10_sample):
  _, (images, _) = cifar10_sample
  return [png_bytes(image) for image in images[:16]]


@pytest.fixture(scope="module")
def server(model_base):
  with ServerProcess(["--model-dir", model_base, "--precision", "float32"]) as running:
    yield running


@pytest.fixture(scope="module")
def channel(server):
  with grpc.insecure_channel(server.grpc_target) as open_channel:
    yield open_channel


@pytest.fixture(scope="module")
def predict(channel):
  return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict


def predict_request(values, signature="", version=None, input_name="image_bytes"):
  return grpc_api.predict_request(NAME, values, signature, version, input_name)


def _saved_model_outputs(version_dir, signature, **inputs):
  function = tf.saved_model.load(version_dir).signatures[signature]
  return {
      k: v.numpy() for k, v in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()
  }


def _error(call) -> grpc.RpcError:
  with pytest.raises(grpc.RpcError) as raised:
    call()
  return raised.value


def test_predict_equals_the_saved_model_and_rest(server, predict, model_base, pngs):
  version = versions_on_disk(model_base)[-1]
  expected = _saved_model_outputs(
      os.path.join(model_base, str(version)), "serving_default", image_bytes=pngs[:5]
  )["embedding"]
  for request in (predict_request(pngs[:5]), predict_request(pngs[:5], "serving_default", version)):
    response = predict(request, timeout=60)
    assert (
        response.model_spec.name,
        response.model_spec.version.value,
        response.model_spec.signature_name,
    ) == (NAME, version, "serving_default")
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["embedding"]), expected, atol=1e-5)
  rest = requests.post(
      f"{server.url}/v1/models/{NAME}:predict",
      json={"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs[:5]]},
      timeout=60,
  ).json()
  np.testing.assert_allclose(rest["predictions"], expected, atol=1e-5)


def test_serving_bfloat16_by_name_is_the_embedding_at_lower_precision(predict, pngs):
  full = tf.make_ndarray(predict(predict_request(pngs[:8]), timeout=60).outputs["embedding"])
  response = predict(predict_request(pngs[:8], "serving_bfloat16"), timeout=60)
  assert response.model_spec.signature_name == "serving_bfloat16"
  half = tf.make_ndarray(response.outputs["embedding"])
  assert half.shape == full.shape and cosines(full, half).min() > BFLOAT16_COSINE_FLOOR


def test_classify_examples_returns_class_names_and_output_filter_selects(
    predict, model_base, cifar10_sample
):
  _, (images, _) = cifar10_sample
  examples = [
      tf.train.Example(
          features=tf.train.Features(
              feature={
                  "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(image)]))
              }
          )
      ).SerializeToString()
      for image in images[:4]
  ]
  version = versions_on_disk(model_base)[-1]
  expected = _saved_model_outputs(
      os.path.join(model_base, str(version)), "classify_examples", examples=examples
  )
  response = predict(
      predict_request(examples, "classify_examples", input_name="examples"), timeout=60
  )
  assert set(response.outputs) == set(expected)
  names = tf.make_ndarray(response.outputs["class_name"])
  assert list(names) == list(expected["class_name"])
  assert {n.decode() for n in names} <= set(cifar10_class_names())
  request = predict_request(examples, "classify_examples", input_name="examples")
  request.output_filter.append("probabilities")
  response = predict(request, timeout=60)
  assert list(response.outputs) == ["probabilities"]
  np.testing.assert_allclose(
      tf.make_ndarray(response.outputs["probabilities"]), expected["probabilities"], atol=1e-5
  )


def test_metadata_is_the_saved_signature_defs(channel, model_base):
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = NAME
  response = stub.GetModelMetadata(request, timeout=60)
  signatures = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata["signature_def"].Unpack(signatures)
  assert set(signatures.signature_def) == {
      "serving_default",
      "serving_bfloat16",
      "embed_examples",
      "classify_examples",
      "classify_examples_bfloat16",
  }
  serving = signatures.signature_def["serving_default"]
  assert serving.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
  assert [d.size for d in serving.outputs["embedding"].tensor_shape.dim][0] == -1
  assert response.model_spec.version.value == versions_on_disk(model_base)[-1]
  request.metadata_field[:] = ["signature_def", "graph"]
  error = _error(lambda: stub.GetModelMetadata(request, timeout=60))
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "graph" in error.details()


def test_status_of_the_model_and_of_a_version(channel, model_base):
  stub = model_service_pb2_grpc.ModelServiceStub(channel)
  version = versions_on_disk(model_base)[-1]
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = NAME
  rows = stub.GetModelStatus(request, timeout=60).model_version_status
  assert rows[0].version == version
  assert rows[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert rows[0].status.error_code == 0 and rows[0].status.error_message == ""
  request.model_spec.version.value = version
  assert [r.version for r in stub.GetModelStatus(request, timeout=60).model_version_status] == [
      version
  ]
  request.model_spec.version.value = version + 1
  error = _error(lambda: stub.GetModelStatus(request, timeout=60))
  assert error.code() == grpc.StatusCode.NOT_FOUND and str(version + 1) in error.details()


def test_a_bad_instance_is_named_and_the_others_are_not_lost(predict, pngs):
  error = _error(lambda: predict(predict_request([pngs[0], b"not an image", pngs[1]]), timeout=60))
  assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "[1]" in error.details() and "[0]" not in error.details(), error.details()
  assert predict(predict_request(pngs[:2]), timeout=60).outputs["embedding"]


@pytest.mark.parametrize(
    "change, code, message",
    [
        (lambda r: setattr(r.model_spec, "name", "other"), "NOT_FOUND", "'other' not found"),
        (
            lambda r: r.model_spec.version.__setattr__("value", 999999999999),
            "NOT_FOUND",
            "version 999999999999",
        ),
        (lambda r: setattr(r.model_spec, "version_label", "stable"), "NOT_FOUND", "'stable'"),
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            "FAILED_PRECONDITION",
            "'nope'",
        ),
        (
            lambda r: r.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0, 2.0])),
            "INVALID_ARGUMENT",
            "DT_FLOAT",
        ),
        (
            lambda r: r.inputs["other"].CopyFrom(r.inputs["image_bytes"]),
            "INVALID_ARGUMENT",
            "['image_bytes', 'other']",
        ),
        (
            lambda r: r.inputs["image_bytes"].tensor_shape.dim.add(size=1),
            "INVALID_ARGUMENT",
            "shape [2, 1]",
        ),
        (lambda r: r.output_filter.append("logits"), "INVALID_ARGUMENT", "'logits'"),
    ],
)
def test_bad_requests_get_tf_servings_status_naming_the_problem(
    predict, pngs, change, code, message
):
  request = predict_request(pngs[:2])
  change(request)
  error = _error(lambda: predict(request, timeout=60))
  assert error.code() == getattr(grpc.StatusCode, code), error
  assert message in error.details(), error.details()


def test_overload_is_shed_with_resource_exhausted(model_base, pngs):
  with (
      ServerProcess(["--model-dir", model_base, "--max-batch", "8", "--max-queued", "8"]) as server,
      grpc.insecure_channel(server.grpc_target) as channel,
  ):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    futures = [stub.Predict.future(predict_request(pngs[:8]), timeout=60) for _ in range(64)]
    codes, shed = [], []
    for future in futures:
      try:
        assert tf.make_ndarray(future.result().outputs["embedding"]).shape[0] == 8
        codes.append(grpc.StatusCode.OK)
      except grpc.RpcError as e:
        codes.append(e.code())
        shed.append(e)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert shed, "64 concurrent requests over a bound of one request were all queued"
    assert all(
        "overloaded" in e.details() and int(dict(e.trailing_metadata())["retry-after"]) >= 1
        for e in shed
    )
    metrics = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=60).text
    assert f"mae_tfx_shed_requests_total {float(len(shed))}" in metrics


def test_rest_and_grpc_requests_share_one_batcher(server, predict, pngs):
  def metric(name):
    text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=60).text
    return int(float(next(line.split()[1] for line in text.splitlines() if line.startswith(name))))

  before = metric("mae_tfx_model_instances_total")
  rest_body = {"instances": [{"b64": base64.b64encode(pngs[0]).decode()}]}
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    rest = [
        pool.submit(
            requests.post, f"{server.url}/v1/models/{NAME}:predict", json=rest_body, timeout=60
        )
        for _ in range(8)
    ]
    grpc_calls = [pool.submit(predict, predict_request(pngs[:1]), timeout=60) for _ in range(8)]
    assert all(f.result().status_code == 200 for f in rest)
    assert all(f.result().outputs["embedding"] for f in grpc_calls)
  assert metric("mae_tfx_model_instances_total") - before == 16
