"""A local embedding server speaking the TF Serving REST API (a subset).

  python -m serving.server --model-dir outputs/serving_model/mae-tfx \
      [--port 8501] [--index embeddings.npz]

  GET  /v1/models/<name>[/versions/<v>]            version status
  GET  /v1/models/<name>[/versions/<v>]/metadata   signatures, inputs, outputs
  POST /v1/models/<name>[/versions/<v>]:predict    {"instances": [{"b64": ...}],
                                                    "signature_name": optional}
  POST /v1/models/<name>[/versions/<v>]:neighbors  {"instances": [{"b64": ...}], "k": 10,
                                                    "threshold": optional cosine,
                                                    "restricts": optional filters}
                                                   or {"ids": ["<indexed id>", ...], ...}
  GET  /v1/models/<name>[/versions/<v>]/search_index  what the index searched holds
  GET  /v1/models/<name>[/versions/<v>]/duplicates    near-duplicate groups (?offset&limit&format)
  GET  /v1/models/<name>[/versions/<v>]/thumbnails/<id>
                                                   an indexed image's thumbnail (image/jpeg);
                                                   <id> is the rest of the path, "/" in it
                                                   percent-encoded or not
  GET  /monitoring/prometheus/metrics              request, batching, model and index metrics
  GET  /                                           the search page (serving/page/)

and TF Serving's gRPC API on --grpc-port (8500, as TF Serving's --port):
PredictionService Predict / GetModelMetadata, ModelService GetModelStatus
(`serving.grpc_api`), sharing the model store, batcher and shutdown.

Serves the newest version under --model-dir and loads a newly pushed one
without a restart (polling, like TF Serving's file-system poll). Concurrent
requests are merged into one model call (`serving.batcher`). Every bad
request gets a 4xx with {"error": "<what is wrong>"} and is logged as one
line; the server keeps serving.
"""

import argparse
import asyncio
import base64
import binascii
import functools
import hashlib
import html
import json
import logging
import os
import signal
import sys
import time
from typing import Dict, List, Optional, Tuple

from models import run_log

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  if not run_log.install(level=logging.INFO, fmt=LOG_FORMAT):
    # A request with a bad image is a client error answered with a 400 and
    # logged as one line; keep TensorFlow's C++ runtime from also logging it.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

# TensorFlow loads with the serving modules below: the log set-up above (run_log's
# filter, or TF_CPP_MIN_LOG_LEVEL) must come first to take effect.
# pylint: disable=wrong-import-position

import numpy as np
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from models import search_index
from models.names import SEARCH_INDEX_DIR, SERVING_DEFAULT
from serving import duplicates, grpc_api
from serving.batcher import BadInstance, Batcher, Overloaded
from serving.embeddings import EmbeddingsFile
from serving.metrics import CONTENT_TYPE, ServerMetrics
from serving.model_store import (
    MAX_BATCH,
    BadRequest,
    LoadedModel,
    ModelStore,
    NotFound,
    cores,
    set_model_threads,
)

log = logging.getLogger("serving")

STORE = web.AppKey("store", ModelStore)
BATCHER = web.AppKey("batcher", Batcher)
INDEX = web.AppKey("index", object)
# The --index file's (near-duplicate projection or None, threshold or None).
INDEX_DUPLICATE_VIEW = web.AppKey("index_duplicate_view", tuple)
DUPLICATES = web.AppKey("duplicates", dict)  # (version, index) -> groups (a future)
PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE = web.AppKey("page", str)  # the search page's HTML
METRICS = web.AppKey("metrics", ServerMetrics)
SIGNATURE = "signature"  # the request's signature, for the latency metric
MAX_NEIGHBOURS = 1000


# --------------------------------------------------------------------------
# Request parsing (TF Serving REST semantics, string inputs as {"b64": ...})
# --------------------------------------------------------------------------
async def read_json_object(request: web.Request) -> Dict:
  """The request's body as a JSON object; BadRequest if it is not valid JSON or not an object."""
  raw = await request.read()  # 413 past the app's client_max_size
  try:
    body = orjson.loads(raw)
  except orjson.JSONDecodeError as e:
    raise BadRequest(f"request body is not valid JSON: {e}") from None
  if not isinstance(body, dict):
    raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
  return body


def decode_instances(body: Dict, input_name: str) -> List[bytes]:
  """`instances` (row format) or `inputs` (columnar) -> the raw byte strings.

  Each instance is {"b64": "<base64>"} or {"<input_name>": {"b64": ...}}.
  """
  if "instances" in body:
    field, items = "instances", body["instances"]
  elif "inputs" in body:
    field, items = "inputs", body["inputs"]
    if isinstance(items, dict) and set(items) == {input_name}:
      items = items[input_name]
  else:
    raise BadRequest(
        "request has no 'instances' field (nor columnar 'inputs'); "
        'expected {"instances": [{"b64": "<base64 image>"}, ...]}'
    )
  if not isinstance(items, list) or not items:
    raise BadRequest(f"'{field}' must be a non-empty list, got {_short(items)}")
  values = []
  for i, entry in enumerate(items):
    nested = isinstance(entry, dict) and set(entry) == {input_name}
    item = entry[input_name] if nested else entry
    if not (isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)):
      raise BadRequest(f'{field}[{i}]: expected {{"b64": "<base64 string>"}}, got {_short(item)}')
    try:
      values.append(base64.b64decode(item["b64"], validate=True))
    except (binascii.Error, ValueError) as e:
      raise BadRequest(f"{field}[{i}].b64 is not valid base64: {e}") from None
  return values


def _short(value, limit: int = 60) -> str:
  text = json.dumps(value)
  return text if len(text) <= limit else text[:limit] + "..."


def _version(request: web.Request) -> Optional[int]:
  text = request.match_info.get("version")
  if text is None:
    return None
  if not text.isdigit():
    raise NotFound(f"version {text!r} not found: versions are integers")
  return int(text)


def _check_name(request: web.Request) -> ModelStore:
  store = request.app[STORE]
  store.check_name(request.match_info["name"])
  return store


# --------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------
async def model_status(request: web.Request) -> web.Response:
  """GET /v1/models/<name>[/versions/<v>]: the state of every version, or of <v>."""
  store = _check_name(request)
  return web.json_response({"model_version_status": store.status(_version(request))})


async def model_metadata(request: web.Request) -> web.Response:
  """GET /v1/models/<name>[/versions/<v>]/metadata: the version's signatures,
  their inputs and outputs with dtype and shape."""
  store = _check_name(request)
  model = store.get(_version(request))
  return web.json_response(
      {
          "model_spec": {"name": store.name, "version": str(model.version)},
          "metadata": {
              "signature_def": {
                  name: sig.describe() for name, sig in sorted(model.signatures.items())
              }
          },
      }
  )


async def predict(request: web.Request) -> web.Response:
  """POST /v1/models/<name>[/versions/<v>]:predict: the signature's outputs on
  the instances, as TF Serving answers (`predictions`, or `outputs` for a
  columnar request); the version that answered in X-Model-Version."""
  store = _check_name(request)
  request.app[BATCHER].check_capacity()
  body = await read_json_object(request)
  signature_name = body.get("signature_name", SERVING_DEFAULT)
  if not isinstance(signature_name, str):
    raise BadRequest(f"'signature_name' must be a string, got {_short(signature_name)}")
  request[SIGNATURE] = signature_name
  model = store.get(_version(request))
  try:
    signature = model.signature(signature_name)
  except NotFound as e:  # the body names it: the request is wrong, not the URL
    raise BadRequest(e.args[0]) from None
  values = decode_instances(body, signature.input_name)
  outputs = await request.app[BATCHER].run(model, signature_name, values)
  return web.Response(
      body=orjson.dumps(
          _format_outputs(outputs, "instances" not in body), option=orjson.OPT_SERIALIZE_NUMPY
      ),
      content_type="application/json",
      headers={"X-Model-Version": str(model.version)},
  )


def _json_values(array) -> object:
  """An output (or one instance's) as what orjson writes as JSON values:
  numbers as the array itself (serialised in C); strings (e.g.
  classify_examples' class_name) as UTF-8 text, as TF Serving returns them."""
  array = np.asarray(array)
  if array.dtype.kind not in ("S", "O"):
    return np.ascontiguousarray(array) if array.ndim else array.item()
  values = array.tolist()

  def text(v):
    if isinstance(v, list):
      return [text(x) for x in v]
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v

  return text(values)


def _format_outputs(outputs: Dict[str, np.ndarray], columnar: bool) -> Dict:
  """TF Serving's response: one output -> a list of values per instance;
  several -> a dict per instance (`outputs` instead for columnar requests)."""
  if columnar:
    if len(outputs) == 1:
      return {"outputs": _json_values(next(iter(outputs.values())))}
    return {"outputs": {k: _json_values(v) for k, v in outputs.items()}}
  if len(outputs) == 1:
    return {"predictions": _json_values(next(iter(outputs.values())))}
  names = sorted(outputs)
  n = len(outputs[names[0]])
  return {"predictions": [{k: _json_values(outputs[k][i]) for k in names} for i in range(n)]}


async def neighbors(request: web.Request) -> web.Response:
  """The k nearest corpus images of each query (at or above an optional
  cosine `threshold`, passing optional Vector Search `restricts`): from the
  served version's own search index, or from the --index file. A query is
  an image, embedded by the model version that made the corpus, or the id
  of an indexed image, whose stored vector is the query and which is left
  out of its own results. Model and index of a version are loaded
  together, so a hot reload never pairs one version's queries with
  another's corpus."""
  _check_name(request)
  body = await read_json_object(request)
  k = body.get("k", 10)
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_NEIGHBOURS:
    raise BadRequest(f"'k' must be an integer in [1, {MAX_NEIGHBOURS}], got {_short(k)}")
  threshold = body.get("threshold")
  if threshold is not None and (
      isinstance(threshold, bool)
      or not isinstance(threshold, (int, float))
      or not -1.0 <= threshold <= 1.0
  ):
    raise BadRequest(
        f"'threshold' must be a number in [-1, 1] (a cosine similarity), got {_short(threshold)}"
    )
  restricts = None
  if body.get("restricts") is not None:
    try:
      restricts = search_index.Restricts.parse(body["restricts"])
    except search_index.BadRestricts as e:
      raise BadRequest(str(e)) from None
  ids = body.get("ids")
  if ids is not None:
    if "instances" in body or "inputs" in body:
      raise BadRequest("give query images ('instances') or indexed ids ('ids'), not both")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
      raise BadRequest(f"'ids' must be a non-empty list of indexed image ids, got {_short(ids)}")
  model, index = _searched(request)
  if ids is not None:
    queries, exclude = _stored_queries(index, ids, model.version)
  else:
    request[SIGNATURE] = SERVING_DEFAULT
    signature = model.signature(SERVING_DEFAULT)
    values = decode_instances(body, signature.input_name)
    outputs = await request.app[BATCHER].run(model, SERVING_DEFAULT, values)
    queries, exclude = outputs[signature.output_names[0]], None
  hits = await asyncio.get_running_loop().run_in_executor(
      None, functools.partial(index.search, queries, k, threshold, restricts, exclude)
  )
  return web.json_response(
      {"model_version": str(model.version), "neighbors": hits},
      headers={"X-Model-Version": str(model.version)},
  )


def _searched(request: web.Request):
  """(the model that embeds queries, the index searched) for a search
  request: the --index file and the version that made it, else the
  requested version and its own index; NotFound naming what is missing."""
  store = request.app[STORE]
  index: Optional[search_index.SearchIndex] = request.app[INDEX]
  if index is not None:
    made_by = index.info["model_version"]
    if _version(request) not in (None, made_by):
      raise NotFound(f"the --index file was made by version {made_by}, not {_version(request)}")
    try:
      return store.get(made_by), index
    except NotFound as e:
      raise NotFound(
          f"the --index file was made by version {made_by}, which cannot be served: {e}"
      ) from None
  model = store.get(_version(request))
  if model.index is None:
    raise NotFound(
        f"version {model.version} of model {store.name!r} has no search "
        f"index ({SEARCH_INDEX_DIR} in its folder); start the server with "
        "--index FILE to search an embeddings file instead"
    )
  return model, model.index


def _stored_queries(index: search_index.SearchIndex, ids: List[str], version: int):
  """(the indexed vectors of `ids`, their rows to leave out of their own
  results); NotFound naming the ids the index does not hold."""
  if index.vectors is None:
    raise BadRequest(
        f"the search index of version {version} keeps no vectors (saved by an "
        "older pipeline): query with images, or push a new version"
    )
  try:
    rows = index.rows_of(ids)
  except KeyError as e:
    missing = e.args[0]
    raise NotFound(
        f"{len(missing)} id(s) not in the search index of version {version}: "
        + ", ".join(repr(i) for i in missing[:5])
        + (" ..." if len(missing) > 5 else "")
    ) from None
  return np.asarray(index.vectors[rows], np.float32), np.asarray(rows)


async def search_index_info(request: web.Request) -> web.Response:
  """GET /v1/models/<name>[/versions/<v>]/search_index: what the index
  searched holds (kind, size, recall, the class and span tokens its filters
  take, with counts), whether it has thumbnails, and near-duplicate search's
  threshold: what a client (the search page) needs to offer its filters."""
  _check_name(request)
  model, index = _searched(request)
  projection, threshold = _duplicate_view(request, model)
  info = index.info
  return web.json_response(
      {
          "model_version": str(model.version),
          "kind": index.kind,
          "count": len(index),
          "dim": info.get("dim"),
          "k": info.get("evaluation", {}).get("k"),
          "recall_at_k": info.get("evaluation", {}).get("recall_at_k"),
          "removed": len(index.removed),
          "classes": _token_counts(index.records, search_index.CLASS_NAMESPACE),
          "spans": _token_counts(index.records, search_index.SPAN_NAMESPACE),
          "thumbnails": model.thumbnails is not None and request.app[INDEX] is None,
          "duplicate_threshold": threshold,
          "duplicate_projection": projection is not None,
      },
      headers={"X-Model-Version": str(model.version)},
  )


def _token_counts(records: search_index.Records, namespace: str) -> List[Dict]:
  """[{"name", "count"}] of the records' tokens in `namespace`, "" (none) left out."""
  tokens, rows = records.namespace(namespace)
  counts = np.bincount(rows, minlength=len(tokens))
  return [{"name": str(t), "count": int(c)} for t, c in zip(tokens, counts) if t]


def _duplicate_view(request: web.Request, model) -> Tuple[Optional[np.ndarray], float]:
  """(near-duplicate search's projection or None, its threshold) for the
  index searched: the --index file's, else the version's own; without a
  projection, cosine on the embedding at `duplicates.DUPLICATE_THRESHOLD`."""
  if request.app[INDEX] is not None:
    projection, threshold = request.app[INDEX_DUPLICATE_VIEW]
  else:
    projection, threshold = model.duplicate_projection()
  return projection, duplicates.DUPLICATE_THRESHOLD if threshold is None else threshold


# The duplicates review compares every image with every other: about a
# minute at 100,000 images on 2 cores, past which a request would time out.
MAX_REVIEWED = 100_000
GROUPS_PAGE = 20


async def duplicate_groups(request: web.Request) -> web.Response:
  """GET /v1/models/<name>[/versions/<v>]/duplicates[?offset=0&limit=20&format=json|csv]:
  the index's images joined into near-duplicate groups (pairs at or above
  the model's threshold, through its projection), largest first; `limit`
  0 is every group; `format=csv` downloads them all, a row per image."""
  _check_name(request)
  model, index = _searched(request)
  offset, limit = (
      _query_int(request, key, default) for key, default in (("offset", 0), ("limit", GROUPS_PAGE))
  )
  form = request.query.get("format", "json")
  if form not in ("json", "csv"):
    raise BadRequest(f"'format' must be json or csv, got {form!r}")
  if index.vectors is None:
    raise BadRequest(
        f"the search index of version {model.version} keeps no vectors (saved by an "
        "older pipeline): push a new version to review its duplicates"
    )
  if len(index) > MAX_REVIEWED:
    raise BadRequest(
        f"the index holds {len(index)} images, more than the server reviews at once "
        f"({MAX_REVIEWED}): run `python -m serving.duplicates` on an embeddings file"
    )
  projection, threshold = _duplicate_view(request, model)
  groups = await _groups_of(request.app, model.version, index, projection, threshold)
  headers = {"X-Model-Version": str(model.version)}
  if form == "csv":
    headers["Content-Disposition"] = f'attachment; filename="duplicates-v{model.version}.csv"'
    return web.Response(
        text=duplicates.groups_text(groups, index.records),
        content_type="text/csv",
        headers=headers,
    )
  shown = groups[offset : offset + limit] if limit else groups[offset:]
  records = index.records
  return web.json_response(
      {
          "model_version": str(model.version),
          "threshold": threshold,
          "projection": projection is not None,
          "images": len(index),
          "images_in_groups": sum(len(g.rows) for g in groups),
          "groups_total": len(groups),
          "offset": offset,
          "groups": [
              {
                  "score": g.score,
                  "items": [records.hit(row, score) for row, score in zip(g.rows, g.scores)],
              }
              for g in shown
          ],
      },
      headers=headers,
  )


def _query_int(request: web.Request, key: str, default: int) -> int:
  text = request.query.get(key)
  if text is None:
    return default
  if not text.isdigit():
    raise BadRequest(f"'{key}' must be a whole number >= 0, got {text!r}")
  return int(text)


async def _groups_of(app: web.Application, version: int, index, projection, threshold):
  """The index's near-duplicate groups, found once per index (in a thread:
  an exact all-pairs search) and kept for the two newest indexes asked."""
  cache: Dict = app[DUPLICATES]
  key = (version, id(index))
  if key not in cache:
    vectors, records = index.vectors, index.records
    cache[key] = asyncio.get_running_loop().run_in_executor(
        None,
        functools.partial(
            duplicates.corpus_groups, vectors, records, projection, threshold, version
        ),
    )
    for old in list(cache)[:-2]:
      del cache[old]
  try:
    return await asyncio.shield(cache[key])
  except Exception:
    cache.pop(key, None)
    raise


def search_page_html(model_name: str) -> str:
  """The search page (serving/page/index.html) for the model `model_name`."""
  with open(os.path.join(PAGE_DIR, "index.html"), encoding="utf-8") as f:
    return f.read().replace("{{MODEL_NAME}}", html.escape(model_name, quote=True))


async def search_page(request: web.Request) -> web.Response:
  """GET /: the search page, rendered once when the app is made."""
  return web.Response(
      text=request.app[PAGE], content_type="text/html", headers={"Cache-Control": "no-cache"}
  )


# A versioned thumbnail URL never changes (a pushed version is never
# rewritten): browsers keep it for a year without asking again. The
# unversioned one answers from whichever version is newest: revalidated
# (its ETag, a hash of the JPEG, stays when a new version reuses it).
VERSIONED_CACHE_CONTROL = "public, max-age=31536000, immutable"
LATEST_CACHE_CONTROL = "no-cache"


async def thumbnail(request: web.Request) -> web.Response:
  """GET /v1/models/<name>[/versions/<v>]/thumbnails/<id>: the JPEG of an
  indexed image from the version's thumbnail store (`models.thumbnails`),
  with caching headers; 304 when If-None-Match holds its ETag."""
  store = _check_name(request)
  version = _version(request)
  model = store.get(version)
  jpeg = _thumbnail_of(model, store.name, request.match_info["id"])
  etag = hashlib.blake2b(jpeg, digest_size=12).hexdigest()
  headers = {
      "Cache-Control": LATEST_CACHE_CONTROL if version is None else VERSIONED_CACHE_CONTROL,
      "ETag": f'"{etag}"',
      "X-Model-Version": str(model.version),
  }
  if any(tag.value in (etag, "*") for tag in request.if_none_match or ()):
    return web.Response(status=304, headers=headers)
  return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


def _thumbnail_of(model: LoadedModel, model_name: str, image_id: str) -> bytes:
  """The thumbnail of `image_id` in `model`'s search index; NotFound naming
  the id and version and why there is none."""
  where = f"version {model.version} of model {model_name!r}"
  if model.index is None:
    raise NotFound(
        f"{where} has no search index ({SEARCH_INDEX_DIR} in its folder), so no thumbnails"
    )
  if model.thumbnails is None:
    raise NotFound(
        f"{where} has no thumbnails: its index was built with search.thumbnail_px 0 "
        "(or before thumbnails were kept)"
    )
  try:
    (row,) = model.index.rows_of([image_id])
  except KeyError:
    raise NotFound(f"id {image_id!r} not in the search index of {where}") from None
  jpeg = model.thumbnails[row]
  if not jpeg:
    raise NotFound(
        f"id {image_id!r} has no thumbnail in {where}: its image did not decode, or its "
        "vector was reused from a version without thumbnails"
    )
  return jpeg


async def metrics(request: web.Request) -> web.Response:
  """Every metric in the Prometheus text format (`serving.metrics`; TF
  Serving serves its own at this path)."""
  return web.Response(
      body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE}
  )


@web.middleware
async def json_errors(request: web.Request, handler):
  """Client errors as {"error": message} with a 4xx and one log line; each
  response counted, with its latency by route and signature."""
  start = time.perf_counter()
  response = await _json_errors(request, handler)
  route = request.match_info.route
  name = getattr(route.handler, "__name__", "") if route.resource is not None else "unmatched"
  request.app[METRICS].observe(
      name, request.get(SIGNATURE, ""), response.status, time.perf_counter() - start
  )
  return response


async def _json_errors(request: web.Request, handler):
  try:
    return await handler(request)
  except (BadRequest, BadInstance) as e:
    status, message = 400, str(e)
  except NotFound as e:
    status, message = 404, e.args[0]
  except Overloaded as e:
    log.warning("503 %s %s: %s", request.method, request.path, e)
    return web.json_response(
        {"error": str(e)}, status=503, headers={"Retry-After": str(e.retry_after)}
    )
  except web.HTTPException as e:
    if e.status < 400:
      raise
    status, message = e.status, _http_error_message(request, e)
  log.info("%d %s %s: %s", status, request.method, request.path, message)
  return web.json_response({"error": message}, status=status)


def _http_error_message(request: web.Request, e: web.HTTPException) -> str:
  if e.status == 404:
    return (
        f"no route {request.method} {request.path}; see "
        "GET /v1/models/<name> and POST /v1/models/<name>[/versions/<v>]:predict"
    )
  if e.status == 405:
    return f"method {request.method} not allowed on {request.path}"
  return e.text or e.reason


def create_app(
    store: ModelStore,
    batcher: Batcher,
    index: Optional[search_index.SearchIndex] = None,
    max_body_bytes: int = 8 << 20,
    index_duplicate_view: Tuple = (None, None),
) -> web.Application:
  """The routes of the module docstring over `store` and `batcher`;
  `:neighbors` searches `index` when given (its near-duplicate projection
  and threshold `index_duplicate_view`), else each version's own."""
  app = web.Application(middlewares=[json_errors], client_max_size=max_body_bytes)
  app[STORE], app[BATCHER], app[INDEX] = store, batcher, index
  app[INDEX_DUPLICATE_VIEW], app[DUPLICATES] = index_duplicate_view, {}
  app[PAGE] = search_page_html(store.name)
  app.router.add_get("/", search_page)
  app.router.add_static("/static/", PAGE_DIR, append_version=False)
  app[METRICS] = ServerMetrics(batcher, store)
  app.router.add_get("/monitoring/prometheus/metrics", metrics)
  model = "/v1/models/{name:[^/:]+}"
  version = model + "/versions/{version:[^/:]+}"
  for prefix in (model, version):
    app.router.add_get(prefix, model_status)
    app.router.add_get(prefix + "/metadata", model_metadata)
    app.router.add_post(prefix + ":predict", predict)
    app.router.add_post(prefix + ":neighbors", neighbors)
    app.router.add_get(prefix + "/search_index", search_index_info)
    app.router.add_get(prefix + "/duplicates", duplicate_groups)
    # The id is the rest of the path: image folder ids hold "/".
    app.router.add_get(prefix + "/thumbnails/{id:.+}", thumbnail)
  return app


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def parse_args(argv):
  """The server's command line (`argv` without the program name)."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
      "--model-dir",
      required=True,
      help="base directory of numeric versions (the Pusher's destination)",
  )
  p.add_argument("--model-name", default=None, help="default: the directory's name")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8501, help="REST; 0: any free port")
  p.add_argument(
      "--grpc-port",
      type=int,
      default=8500,
      help="TF Serving's gRPC API (TF Serving's --port); 0: any free port, -1: no gRPC",
  )
  p.add_argument(
      "--poll-seconds", type=float, default=2.0, help="how often to look for a newly pushed version"
  )
  p.add_argument("--max-body-mb", type=float, default=8.0)
  p.add_argument(
      "--max-batch",
      type=int,
      default=MAX_BATCH,
      help="most instances in one model call: requests merge up to it, a "
      "bigger request is cut into calls run side by side",
  )
  p.add_argument(
      "--precision",
      choices=["float32", "bfloat16"],
      default="float32",
      help="what serving_default and classify_examples compute in: bfloat16 "
      "answers them with the version's serving_bfloat16 and "
      "classify_examples_bfloat16 signatures (faster on a CPU with native "
      "bfloat16; docs/serving.md)",
  )
  p.add_argument(
      "--no-compile",
      action="store_true",
      help="run every signature op by op, as saved (as TF Serving does), "
      "instead of compiling the encoder with XLA per batch size",
  )
  p.add_argument(
      "--model-threads",
      type=int,
      default=cores(),
      help="model calls at once, each on cores / N of TensorFlow's intra-op "
      "threads (default: one per core: a one-image call pays no thread "
      "handoffs; 1: each call spread over every core)",
  )
  p.add_argument(
      "--max-queued",
      type=int,
      default=512,
      help="most instances waiting for the model (about 1 s of work on 2 "
      "cores); past it requests get 503 + Retry-After (load shedding)",
  )
  p.add_argument(
      "--index",
      default=None,
      help="an embeddings file (python -m serving.embed) for POST :neighbors, "
      "instead of each version's own search index",
  )
  p.add_argument(
      "--drain-seconds",
      type=float,
      default=20.0,
      help="on SIGTERM/SIGINT, how long requests in flight may take to finish",
  )
  p.add_argument("--access-log", action="store_true")
  p.add_argument(
      "-v",
      "--verbose",
      action="store_true",
      help="show every log line, third-party notices included (also MAE_TFX_VERBOSE=1)",
  )
  return p.parse_args(argv)


async def serve(args) -> None:
  """Loads the newest version, then serves REST (and gRPC) until SIGINT or
  SIGTERM; then finishes the requests in flight and stops."""
  base = os.path.abspath(args.model_dir)
  set_model_threads(args.model_threads)
  precision = args.precision
  store = ModelStore(
      base,
      args.model_name or os.path.basename(base.rstrip("/")),
      max_batch=args.max_batch,
      precision=precision,
      compiled=not args.no_compile,
  )
  # Load before listening, as TF Serving does: no request meets an empty
  # server, and a folder with nothing to serve is an error to fix now.
  if store.refresh() is None:
    failed = store.failed
    raise SystemExit(
        f"serving.server: no loadable version under {base}: "
        + (
            "; ".join(f"version {v} failed to load: {why}" for v, why in sorted(failed.items()))
            if failed
            else "no numeric version folder with a saved_model.pb (push a model "
            "first: `make pipeline`)"
        )
    )
  store.start_polling(args.poll_seconds)
  table = EmbeddingsFile.load(args.index) if args.index else None
  index = table.index() if table else None
  batcher = Batcher(
      max_batch=args.max_batch, threads=max(1, args.model_threads), max_queued=args.max_queued
  )
  app = create_app(
      store,
      batcher,
      index,
      int(args.max_body_mb * (1 << 20)),
      (table.duplicate_projection, table.duplicate_threshold) if table else (None, None),
  )
  runner = web.AppRunner(
      app, access_log=log if args.access_log else None, shutdown_timeout=args.drain_seconds
  )
  await runner.setup()
  site = web.TCPSite(runner, args.host, args.port)
  await site.start()
  host, port = site._server.sockets[0].getsockname()[:2]  # pylint: disable=protected-access
  grpc_server = None
  if args.grpc_port >= 0:
    grpc_server, grpc_port = await grpc_api.start(
        store, batcher, args.host, args.grpc_port, int(args.max_body_mb * (1 << 20))
    )
    # Before the REST line: a client that waits for that line finds both up.
    print(f"serving.server: gRPC on {args.host}:{grpc_port}", flush=True)
  how = "as saved" if args.no_compile else "the encoder compiled per batch size"
  print(
      f"serving.server: model {store.name!r} version {store.latest_version} "
      f"(serving_default in {precision}, {how}) on http://{host}:{port}",
      flush=True,
  )
  print(f"serving.server: the search page is http://{host}:{port}/", flush=True)
  stop = asyncio.Event()
  for sig in (signal.SIGINT, signal.SIGTERM):
    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
  await stop.wait()
  # Graceful stop: the listening socket closes first (new connections are
  # refused), requests in flight finish within --drain-seconds, then exit 0.
  print(
      f"serving.server: stopping; finishing requests in flight (at most "
      f"{args.drain_seconds:g} s)",
      flush=True,
  )
  await asyncio.gather(
      runner.cleanup(), *([grpc_server.stop(args.drain_seconds)] if grpc_server else [])
  )
  store.stop()
  batcher.close()
  print("serving.server: stopped", flush=True)


class MalformedRequestsAsClientErrors(logging.Filter):
  """aiohttp answers a request it cannot parse (a bad header, a broken
  request line) with a 400 but logs it at ERROR with a traceback: make that
  one INFO line, like every other client error."""

  def filter(self, record: logging.LogRecord) -> bool:
    """Turns a malformed-request record into one INFO line; keeps every record."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError) and 400 <= (error.code or 500) < 500:
      record.levelno, record.levelname = logging.INFO, "INFO"
      message = " ".join(str(error.message).split())
      record.msg, record.args = f"{error.code} malformed request: %s", (message,)
      record.exc_info = record.exc_text = None
    return True


def main(argv=None) -> None:
  """Runs the server the command line `argv` describes until it is stopped."""
  logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
  logging.getLogger("aiohttp.server").addFilter(MalformedRequestsAsClientErrors())
  asyncio.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
  main()
