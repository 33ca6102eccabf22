"""TF Serving's gRPC API over the server's model store and batcher.

  tensorflow.serving.PredictionService/Predict           a signature on string inputs
  tensorflow.serving.PredictionService/GetModelMetadata  its SignatureDefs
  tensorflow.serving.ModelService/GetModelStatus         version states

The messages are the `tensorflow-serving-api` package's, so TF Serving's own
clients (`prediction_service_pb2_grpc.PredictionServiceStub`) work unchanged.
It runs on the REST side's asyncio loop and shares its model store (hot
reload), batcher (requests from both APIs merge into one model call, one
queue bound), errors and shutdown. Status codes are TF Serving's:
NOT_FOUND for an unknown model or version, FAILED_PRECONDITION for an
unknown signature, INVALID_ARGUMENT for a request or instance the model
cannot take (naming it), RESOURCE_EXHAUSTED when the queue is full (load
shedding, with a retry-after trailer).
"""

import logging
from typing import Dict, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from models.names import IMAGE_BYTES_INPUT, SERVING_DEFAULT
from serving.batcher import BadInstance, Batcher, Overloaded
from serving.model_store import BadRequest, ModelStore, NotFound, UnknownSignature

log = logging.getLogger("serving.grpc")

SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving has
_STATES = get_model_status_pb2.ModelVersionStatus.State


def _version(spec) -> Optional[int]:
  if spec.version_label:
    raise NotFound(
        f"version label {spec.version_label!r} not found: this server has no "
        "version labels; ask for a version number"
    )
  return spec.version.value if spec.HasField("version") else None


def input_strings(request: predict_pb2.PredictRequest, input_name: str) -> List[bytes]:
  """The signature's one string input as a list, checked as TF Serving
  checks it (the input named, DT_STRING, shape [B])."""
  if set(request.inputs) != {input_name}:
    raise BadRequest(
        f"inputs must be exactly {{'{input_name}'}}, got {sorted(request.inputs) or 'none'}"
    )
  tensor = request.inputs[input_name]
  if tensor.dtype != types_pb2.DT_STRING:
    raise BadRequest(
        f"input '{input_name}' must be DT_STRING (encoded images), got "
        f"{types_pb2.DataType.Name(tensor.dtype)}"
    )
  dims = [d.size for d in tensor.tensor_shape.dim]
  values = list(tensor.string_val)
  if len(dims) != 1 or dims[0] != len(values) or not values:
    raise BadRequest(
        f"input '{input_name}' must have shape [B] with B >= 1 strings, got "
        f"shape {dims} holding {len(values)} value(s)"
    )
  return values


def predict_request(
    model_name: str,
    values: List[bytes],
    signature_name: str = "",
    version: Optional[int] = None,
    input_name: str = IMAGE_BYTES_INPUT,
) -> predict_pb2.PredictRequest:
  """A client's PredictRequest of byte strings (images or serialized
  Examples), as TF Serving's clients build it."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  request.inputs[input_name].CopyFrom(tf.make_tensor_proto(values, shape=[len(values)]))
  return request


def output_protos(outputs: Dict[str, np.ndarray], output_filter) -> Dict:
  """{output: TensorProto} of the outputs `output_filter` names (empty: all);
  BadRequest naming those the signature does not have."""
  names = list(output_filter) or sorted(outputs)
  unknown = [n for n in names if n not in outputs]
  if unknown:
    raise BadRequest(
        f"output_filter names {unknown}, not outputs of the signature; its "
        f"outputs: {sorted(outputs)}"
    )
  return {n: tf.make_tensor_proto(outputs[n]) for n in names}


class _Api:
  """What both services share: the store, the batcher, and the mapping of
  the server's errors onto gRPC status codes."""

  def __init__(self, store: ModelStore, batcher: Batcher):
    self.store, self.batcher = store, batcher

  async def _answer(self, context, handler, request):
    """The handler's response, or its error as TF Serving's status code and
    one log line (as REST logs its 4xx)."""
    trailing = ()
    try:
      return await handler(request)
    except UnknownSignature as e:
      code, message = grpc.StatusCode.FAILED_PRECONDITION, e.args[0]
    except NotFound as e:
      code, message = grpc.StatusCode.NOT_FOUND, e.args[0]
    except (BadRequest, BadInstance) as e:
      code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
    except Overloaded as e:
      code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)
      trailing = (("retry-after", str(e.retry_after)),)
    (log.warning if trailing else log.info)(
        "gRPC %s %s: %s", code.name, handler.__name__.lstrip("_"), message
    )
    await context.abort(code, message, trailing)


class PredictionService(_Api, prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata; Classify, Regress and MultiInference (for
  Example-input estimator signatures) answer UNIMPLEMENTED."""

  async def Predict(self, request, context):  # pylint: disable=invalid-name
    """The signature's outputs on the request's strings, batched with other requests."""
    return await self._answer(context, self._predict, request)

  async def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    """The version's SignatureDefs, as saved (the `signature_def` field only)."""
    return await self._answer(context, self._metadata, request)

  async def _predict(self, request: predict_pb2.PredictRequest):
    self.store.check_name(request.model_spec.name)
    self.batcher.check_capacity()
    model = self.store.get(_version(request.model_spec))
    signature_name = request.model_spec.signature_name or SERVING_DEFAULT
    signature = model.signature(signature_name)
    values = input_strings(request, signature.input_name)
    outputs = await self.batcher.run(model, signature_name, values)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = self.store.name
    response.model_spec.version.value = model.version
    response.model_spec.signature_name = signature_name
    for name, proto in output_protos(outputs, request.output_filter).items():
      response.outputs[name].CopyFrom(proto)
    return response

  async def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
    self.store.check_name(request.model_spec.name)
    fields = set(request.metadata_field)
    if fields != {SIGNATURE_DEF_FIELD}:
      raise BadRequest(
          f"metadata_field must be ['{SIGNATURE_DEF_FIELD}'] (the one field "
          f"served), got {sorted(fields)}"
      )
    model = self.store.get(_version(request.model_spec))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = self.store.name
    response.model_spec.version.value = model.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in model.signature_defs().items():
      signatures.signature_def[name].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


class ModelService(_Api, model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED (the
  server follows its model folder instead)."""

  async def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
    """The state of the version asked for, or of every version, newest first."""
    return await self._answer(context, self._status, request)

  async def _status(self, request: get_model_status_pb2.GetModelStatusRequest):
    self.store.check_name(request.model_spec.name)
    response = get_model_status_pb2.GetModelStatusResponse()
    for row in self.store.status(_version(request.model_spec)):
      status = response.model_version_status.add(
          version=int(row["version"]), state=_STATES.Value(row["state"])
      )
      status.status.error_code = error_codes_pb2.Code.Value(row["status"]["error_code"])
      status.status.error_message = row["status"]["error_message"]
    return response


async def start(
    store: ModelStore, batcher: Batcher, host: str, port: int, max_message_bytes: int
) -> "tuple[grpc.aio.Server, int]":
  """Starts the gRPC server on the running loop; (server, bound port)."""
  options = [
      ("grpc.max_receive_message_length", max_message_bytes),
      ("grpc.max_send_message_length", max_message_bytes),
  ]
  server = grpc.aio.server(options=options)
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionService(store, batcher), server
  )
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(store, batcher), server)
  try:
    bound = server.add_insecure_port(f"{host}:{port}")
  except RuntimeError as e:  # the port is taken, or the host not ours
    raise SystemExit(f"serving.server: cannot listen for gRPC on {host}:{port}: {e}") from None
  await server.start()
  return server, bound
