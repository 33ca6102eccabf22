"""The pushed versions of one model, as TF Serving sees them.

The Pusher writes `<base>/<version>/saved_model.pb` (numeric versions, copied
to a hidden staging directory and renamed into place). The store loads the
newest version at start, polls the base directory and loads a newly pushed
version in the background (warmed up before it takes traffic), so a server
picks it up without a restart. Older versions are loaded on their first
request and kept in a small LRU.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from models import search_index, thumbnails
from models.names import (
    BFLOAT16_TWIN,
    EMBED_IMAGES,
    PREPARE_IMAGE_BYTES,
    SEARCH_INDEX_DIR,
    SERVING_BFLOAT16,
    SERVING_DEFAULT,
    pushed_versions,
)
from serving.compiled import CompiledImageSignature
from serving.metrics import folder_bytes

log = logging.getLogger("serving.model_store")

# Most images in one model call. On one core a call of 32-64 images embeds
# the most per second (a 256-image call's activations outgrow the caches),
# and a bigger batch is cut into such calls, which the server and
# serving.embed run side by side, one per core.
MAX_BATCH = 64


def cores() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0))


def set_model_threads(model_threads: int) -> None:
  """Gives each of `model_threads` concurrent model calls cores / N of
  TensorFlow's intra-op threads (one per core by default: a call on one
  thread pays no thread handoffs, and N calls keep N cores busy). Call it
  before TensorFlow's runtime starts (the first model load starts it);
  after, the setting stays as it is."""
  threads = max(1, cores() // max(1, model_threads))
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  except RuntimeError:  # the runtime has started (a caller in a process using TF)
    log.info(
        "TensorFlow already runs with %d intra-op thread(s) per call; wanted %d",
        tf.config.threading.get_intra_op_parallelism_threads(),
        threads,
    )


def error_summary(error: tf.errors.OpError) -> str:
  """The op's own message ("Unknown image file format...") out of a graph
  execution error's text, without the node and stack boilerplate."""
  lines = [line.strip() for line in error.message.splitlines()]
  useful = [
      line
      for line in lines
      if line
      and not line.startswith(("[[", "<stack"))
      and not line.startswith(("Graph execution error", "Detected at node"))
  ]
  return useful[0] if useful else lines[0]


class NotFound(LookupError):
  """An unknown model or version (REST 404, gRPC NOT_FOUND)."""


class UnknownSignature(NotFound):
  """A signature the version does not have (REST 400: the body names it;
  gRPC FAILED_PRECONDITION, as TF Serving answers)."""


class BadRequest(ValueError):
  """A request the client must fix (REST 400, gRPC INVALID_ARGUMENT)."""


@dataclasses.dataclass
class Signature:
  """A signature this server can feed: exactly one string input."""

  name: str
  input_name: str
  output_names: List[str]
  function: Callable

  def describe(self) -> Dict:
    """Its input and outputs, {name: {dtype, shape}} each (the REST metadata's)."""
    spec = self.function.structured_input_signature[1][self.input_name]
    return {
        "inputs": {self.input_name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}},
        "outputs": {
            k: {"dtype": v.dtype.name, "shape": v.shape.as_list()}
            for k, v in sorted(self.function.structured_outputs.items())
        },
    }


class LoadedModel:
  """One SavedModel version, its string-input signatures, and the search
  index pushed with it (None when it has none) with its thumbnails (None
  when it has none: search.thumbnail_px 0). A version whose index is
  there but cannot be loaded fails to load as a whole: model and index are
  served together or not at all.

  Image-bytes signatures whose halves the version saved run compiled
  (`serving.compiled`, up to `max_batch` images a call, buckets compiled in
  the background with `compile_in_background` (a server), else on first
  need; `compiled=False`: always the signature). `precision` "bfloat16" answers `serving_default`
  with `serving_bfloat16` and `classify_examples` with `classify_examples_bfloat16`
  (when the version has them)."""

  def __init__(
      self,
      version: int,
      path: str,
      max_batch: int = MAX_BATCH,
      compiled: bool = True,
      precision: str = "float32",
      compile_in_background: bool = False,
  ):
    self.version, self.path, self.max_batch = version, path, max_batch
    index_dir = os.path.join(path, SEARCH_INDEX_DIR)
    # The index loads (file reads, numpy) while TensorFlow restores the model.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      index = pool.submit(search_index.load, index_dir) if tf.io.gfile.exists(index_dir) else None
      self.saved_model = tf.saved_model.load(path)
      self.index: Optional[search_index.SearchIndex] = index.result() if index else None
    self.thumbnails = (
        thumbnails.ThumbnailStore.load(index_dir, len(self.index))
        if self.index is not None
        else None
    )
    self.signatures: Dict[str, Signature] = {}
    for name, function in self.saved_model.signatures.items():
      inputs = function.structured_input_signature[1]
      if len(inputs) == 1 and next(iter(inputs.values())).dtype == tf.string:
        self.signatures[name] = Signature(
            name, next(iter(inputs)), sorted(function.structured_outputs), function
        )
    if not self.signatures:
      raise ValueError(f"{path} has no signature with one string input")
    self.precision = (
        "bfloat16" if precision == "bfloat16" and SERVING_BFLOAT16 in self.signatures else "float32"
    )
    self._compiled: Dict[str, CompiledImageSignature] = {}
    prepare = getattr(self.saved_model, PREPARE_IMAGE_BYTES, None)
    for name, function in (EMBED_IMAGES.items() if compiled and prepare else ()):
      embed = getattr(self.saved_model, function, None)
      if embed is not None and name in self.signatures:
        self._compiled[name] = CompiledImageSignature(
            name, prepare, embed, max_batch, compile_in_background
        )
    self._signature_defs: Optional[Dict[str, meta_graph_pb2.SignatureDef]] = None
    self.load_seconds = 0.0  # set by the ModelStore that loads it
    local = "://" not in path
    self.size_bytes = folder_bytes(path, SEARCH_INDEX_DIR) if local else 0
    self.index_size_bytes = folder_bytes(index_dir) if local and self.index is not None else 0

  def duplicate_projection(self) -> Tuple[Optional[np.ndarray], Optional[float]]:
    """(near-duplicate search's projection [D, k], its threshold) saved with
    the version (`models.near_duplicates`); (None, None) for a version
    without them (older models, `search.duplicate_dims` 0)."""
    projection = getattr(self.saved_model, "duplicate_projection", None)
    if projection is None:
      return None, None
    threshold = float(self.saved_model.duplicate_threshold.numpy())
    return projection.numpy(), round(threshold, 6)

  def signature(self, name: str) -> Signature:
    """Signature `name`; UnknownSignature, naming those there are, if it has none."""
    if name not in self.signatures:
      raise UnknownSignature(
          f"signature {name!r} not found in version {self.version}; "
          f"available: {sorted(self.signatures)}"
      )
    return self.signatures[name]

  def signature_defs(self) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the served signatures, as saved (what TF
    Serving's GetModelMetadata returns)."""
    if self._signature_defs is None:
      saved = saved_model_pb2.SavedModel()
      with tf.io.gfile.GFile(os.path.join(self.path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
      self._signature_defs = {
          name: saved.meta_graphs[0].signature_def[name] for name in sorted(self.signatures)
      }
    return self._signature_defs

  def run(self, signature_name: str, values: List[bytes]) -> Dict[str, np.ndarray]:
    """Calls one signature on a batch of strings; {output: [B, ...] array}.
    A compiled signature takes a batch of more than `max_batch` in calls of
    `max_batch`."""
    sig = self.signature(self._answered_by(signature_name))
    compiled = self._compiled.get(sig.name)
    if compiled and len(values) > self.max_batch:
      parts = [
          self.run(signature_name, values[i : i + self.max_batch])
          for i in range(0, len(values), self.max_batch)
      ]
      return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    outputs = compiled.run(values) if compiled else None
    if outputs is not None:
      return outputs
    outputs = sig.function(**{sig.input_name: tf.constant(values, tf.string)})
    return {k: v.numpy() for k, v in outputs.items()}

  def compiled(self, signature_name: str) -> Optional[CompiledImageSignature]:
    """The compiled path that answers `signature_name`, if any."""
    return self._compiled.get(self._answered_by(signature_name))

  def _answered_by(self, signature_name: str) -> str:
    twin = BFLOAT16_TWIN.get(signature_name)
    if self.precision == "bfloat16" and twin in self.signatures:
      return twin
    return signature_name

  def run_isolating_errors(
      self, signature_name: str, values: List[bytes]
  ) -> Tuple[Optional[Dict[str, np.ndarray]], List[int], Dict[int, str]]:
    """`run`, but a batch that fails on bad input (a value that is not an
    image) is re-run value by value to find which. Returns (outputs of the
    values that ran, stacked, or None if none did; their indices; {index:
    error summary} of those that failed)."""
    try:
      return self.run(signature_name, values), list(range(len(values))), {}
    except tf.errors.InvalidArgumentError:
      pass
    ran, kept, errors = [], [], {}
    for i, value in enumerate(values):
      try:
        ran.append(self.run(signature_name, [value]))
        kept.append(i)
      except tf.errors.InvalidArgumentError as e:
        errors[i] = error_summary(e)
    outputs = {k: np.concatenate([r[k] for r in ran]) for k in ran[0]} if ran else None
    return outputs, kept, errors

  def close(self, wait: bool = True) -> None:
    """Stops background compiling (`wait`: waits for the compile in progress)."""
    for compiled in self._compiled.values():
      compiled.close(wait)

  def warm_up(self) -> None:
    """One call of `serving_default` on a black 32x32 PNG, so the first
    client request pays for no graph initialisation; its one-image bucket
    compiled now, or queued first for the background compiler (a server
    answers with the signature meanwhile: start-up does not wait for XLA)."""
    if SERVING_DEFAULT in self.signatures:
      png = tf.io.encode_png(tf.zeros([32, 32, 3], tf.uint8)).numpy()
      compiled = self.compiled(SERVING_DEFAULT)
      if compiled:
        compiled.prepare(1)
      self.run(SERVING_DEFAULT, [png])


def versions_on_disk(base_dir: str) -> List[int]:
  """Complete versions (a numeric directory with a saved_model.pb), oldest first."""
  if not tf.io.gfile.isdir(base_dir):
    return []
  return [
      v
      for v in pushed_versions(tf.io.gfile.listdir(base_dir))
      if tf.io.gfile.exists(os.path.join(base_dir, str(v), "saved_model.pb"))
  ]


def version_identity(model_dir: str) -> Tuple[str, int, str]:
  """(version folder, version, fingerprint) of a pushed version, or of the
  newest under a base directory, without loading it: the fingerprint is the
  SHA-256 of its fingerprint.pb (TF's hashes of graph and checkpoint), else
  of its saved_model.pb. For caches of what a version computed."""
  model_dir = os.path.abspath(model_dir.rstrip("/"))
  if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
    versions = versions_on_disk(model_dir)
    if not versions:
      raise FileNotFoundError(
          f"{model_dir}: neither a SavedModel nor a folder of numeric versions holding one"
      )
    model_dir = os.path.join(model_dir, str(versions[-1]))
  version = pushed_versions([os.path.basename(model_dir)])
  source = next(
      p
      for p in (
          os.path.join(model_dir, "fingerprint.pb"),
          os.path.join(model_dir, "saved_model.pb"),
      )
      if tf.io.gfile.exists(p)
  )
  with tf.io.gfile.GFile(source, "rb") as f:
    return model_dir, (version[0] if version else 0), hashlib.sha256(f.read()).hexdigest()


def load_version(model_dir: str) -> LoadedModel:
  """A version directory (with saved_model.pb), or a base directory of
  versions (its newest), loaded."""
  model_dir = model_dir.rstrip("/")
  if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
    version = pushed_versions([os.path.basename(model_dir)])
    return LoadedModel(version[0] if version else 0, model_dir)
  versions = versions_on_disk(model_dir)
  if not versions:
    raise FileNotFoundError(
        f"{model_dir} is neither a SavedModel nor a directory of numeric versions holding one"
    )
  return LoadedModel(versions[-1], os.path.join(model_dir, str(versions[-1])))


class ModelStore:
  """Serves the newest version of the model under `base_dir`, any other
  version on request; `refresh` (or the polling thread) picks up new ones."""

  def __init__(
      self,
      base_dir: str,
      name: str,
      max_loaded: int = 3,
      max_batch: int = MAX_BATCH,
      precision: str = "float32",
      compiled: bool = True,
  ):
    self.base_dir, self.name, self.max_loaded = base_dir, name, max(1, max_loaded)
    self.load_options = dict(
        max_batch=max_batch, precision=precision, compiled=compiled, compile_in_background=True
    )
    self._loaded: "collections.OrderedDict[int, LoadedModel]" = collections.OrderedDict()
    self._failed: Dict[int, str] = {}
    self._latest: Optional[int] = None
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._poller: Optional[threading.Thread] = None

  # ---- versions ----------------------------------------------------------
  @property
  def latest_version(self) -> Optional[int]:
    """The version served by default; None until one has loaded."""
    return self._latest

  @property
  def failed(self) -> Dict[int, str]:
    """{version: why it failed to load}."""
    return dict(self._failed)

  def refresh(self) -> Optional[int]:
    """Loads the newest version on disk when it is newer than the one served;
    returns the version now served. A version that fails to load is logged,
    reported in `status` and skipped; the previous version keeps serving."""
    candidates = [
        v
        for v in versions_on_disk(self.base_dir)
        if v not in self._failed and (self._latest is None or v > self._latest)
    ]
    for version in reversed(candidates):
      try:
        model = self._load(version)
      except Exception as e:  # pylint: disable=broad-except
        self._failed[version] = f"{type(e).__name__}: {e}"
        log.error(
            "Version %d of %s failed to load, still serving %s: %s",
            version,
            self.name,
            self._latest,
            self._failed[version],
        )
        continue
      model.warm_up()
      with self._lock:
        self._remember(model)
        self._latest = version
      log.info("Serving %s version %d from %s", self.name, version, model.path)
      break
    return self._latest

  def check_name(self, name: str) -> None:
    """Raises NotFound unless `name` is the model this store serves."""
    if name != self.name:
      raise NotFound(f"model {name!r} not found; this server serves {self.name!r}")

  def get(self, version: Optional[int] = None) -> LoadedModel:
    """The latest version, or `version` (loaded on first use)."""
    with self._lock:
      if version is None:
        if self._latest is None:
          raise NotFound(
              f"no version of model {self.name!r} is loaded yet (none under {self.base_dir})"
          )
        version = self._latest
      if version in self._loaded:
        self._loaded.move_to_end(version)
        return self._loaded[version]
    on_disk = versions_on_disk(self.base_dir)
    if version not in on_disk:
      raise NotFound(
          f"version {version} of model {self.name!r} not found; available versions: {on_disk}"
      )
    if version in self._failed:
      raise NotFound(
          f"version {version} of model {self.name!r} failed to load: {self._failed[version]}"
      )
    model = self._load(version)
    with self._lock:
      return self._remember(model)

  def status(self, version: Optional[int] = None) -> List[Dict]:
    """TF Serving's `model_version_status` entries, newest first."""
    versions = sorted(
        set(versions_on_disk(self.base_dir)) | set(self._loaded) | set(self._failed), reverse=True
    )
    if version is not None:
      if version not in versions:
        raise NotFound(
            f"version {version} of model {self.name!r} not found; "
            f"available versions: {sorted(versions)}"
        )
      versions = [version]
    rows = []
    for v in versions:
      if v in self._failed:
        state, code, message = "END", "UNKNOWN", self._failed[v]
      elif v in self._loaded:
        state, code, message = "AVAILABLE", "OK", ""
      else:  # on disk, loaded on first request
        state, code, message = "START", "OK", "loaded on first request"
      rows.append(
          {
              "version": str(v),
              "state": state,
              "status": {"error_code": code, "error_message": message},
          }
      )
    return rows

  # ---- polling -----------------------------------------------------------
  def start_polling(self, interval_seconds: float) -> None:
    """Checks for new versions every `interval_seconds` in a daemon thread."""

    def poll():
      while not self._stop.wait(interval_seconds):
        try:
          self.refresh()
        except Exception:  # pylint: disable=broad-except
          log.exception("Polling %s failed; will retry", self.base_dir)

    self._poller = threading.Thread(target=poll, name="model-poller", daemon=True)
    self._poller.start()

  def loaded_models(self) -> List[LoadedModel]:
    """The versions loaded now, oldest first."""
    with self._lock:
      return list(self._loaded.values())

  def stop(self) -> None:
    """Stops polling, and each loaded version's compiler after its compile in progress."""
    self._stop.set()
    if self._poller:
      self._poller.join(timeout=5)
    with self._lock:
      loaded = list(self._loaded.values())
    for model in loaded:
      model.close()

  # ---- internals ---------------------------------------------------------
  def _load(self, version: int) -> LoadedModel:
    start = time.perf_counter()
    model = LoadedModel(version, os.path.join(self.base_dir, str(version)), **self.load_options)
    model.load_seconds = time.perf_counter() - start
    log.info("Loaded %s version %d in %.1f s", self.name, version, model.load_seconds)
    return model

  def _remember(self, model: LoadedModel) -> LoadedModel:
    """Caches `model` (caller holds the lock), evicting the least recently
    used version other than the latest."""
    self._loaded[model.version] = model
    self._loaded.move_to_end(model.version)
    while len(self._loaded) > self.max_loaded:
      evict = next(v for v in self._loaded if v != self._latest and v != model.version)
      self._loaded.pop(evict).close(wait=False)
    return model
