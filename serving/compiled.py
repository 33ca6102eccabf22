"""An image-bytes signature run with its encoder compiled by XLA.

A signature call runs a few hundred TensorFlow ops one by one; for one image
their dispatch costs more than their arithmetic. XLA compiles the encoder and
whitening into one program, but it cannot compile image decoding, and it
compiles for fixed shapes. So for a version that saved the signature's halves
(names.PREPARE_IMAGE_BYTES, names.EMBED_IMAGES) this builds, per batch-size
bucket (powers of two up to `max_batch`), one function: decoding + Transform
as saved, the images padded up to the bucket, the compiled encoder and
whitening, the padding cut off. One call a batch, as for the signature.

A bucket compiles on first need (about a second each). A server compiles
in a background thread (`background=True`): until a bucket is ready, batches
of its size go through the signature, so no request waits for a compiler
and a version serves as soon as it loads (the one-image bucket is queued
first, at warm-up). A batch job compiles in its own
thread, once, and never leaves a compiler running when it exits.
"""

import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

log = logging.getLogger("serving.compiled")


def bucket_sizes(max_batch: int) -> List[int]:
  """1, 2, 4, ... up to max_batch (itself the last, power of two or not)."""
  sizes = [1]
  while sizes[-1] * 2 < max_batch:
    sizes.append(sizes[-1] * 2)
  return sizes + ([max_batch] if max_batch > 1 else [])


class CompiledImageSignature:
  """`run(values)` -> {output: [len(values), ...]} or None while the bucket of
  len(values) is still compiling (the caller runs the signature instead)."""

  def __init__(
      self, name: str, prepare: Callable, embed: Callable, max_batch: int, background: bool = False
  ):
    self.name, self.background = name, background
    # Concrete functions: a call costs a fraction of a restored tf.function's.
    self._prepare = prepare.concrete_functions[0]
    # The compiled half, on prepared images of a bucket's size [bucket, S, S, C].
    self.compiled_embed = tf.function(embed.concrete_functions[0], jit_compile=True)
    self._shape = embed.input_signature[0].shape[1:]  # [S, S, C]
    self._buckets = bucket_sizes(max_batch)
    self._programs: Dict[int, Callable] = {}  # bucket -> function
    self._ready = set()
    self._requested = set()
    self._todo: "queue.Queue[int]" = queue.Queue()
    self._compiler: Optional[threading.Thread] = None
    self._lock = threading.Lock()
    self._compiling = threading.Lock()

  @property
  def buckets(self) -> List[int]:
    """The batch sizes compiled for, smallest first (`bucket_sizes`)."""
    return list(self._buckets)

  @property
  def ready_buckets(self) -> List[int]:
    """The buckets compiled so far, smallest first."""
    return sorted(self._ready)

  def bucket(self, n: int) -> Optional[int]:
    """The smallest bucket that holds `n` images; None past `max_batch`."""
    return next((b for b in self._buckets if b >= n), None)

  def program(self, bucket: int) -> Callable:
    """[n <= bucket] image bytes -> {output: [n, ...]}, compiled on first call."""
    if bucket not in self._programs:
      shape = self._shape

      @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
      def run(image_bytes):
        images = self._prepare(image_bytes)  # [n, S, S, C]
        n = tf.shape(images)[0]
        padded = tf.ensure_shape(
            tf.pad(images, [[0, bucket - n]] + [[0, 0]] * len(shape)), [bucket, *shape]
        )
        return {k: v[:n] for k, v in self.compiled_embed(padded).items()}

      self._programs[bucket] = run.get_concrete_function()
    return self._programs[bucket]

  def compile(self, bucket: int) -> None:
    """Compiles one bucket now, in the calling thread (threads that need
    the same bucket at once wait for one compile)."""
    with self._compiling:
      if bucket in self._ready:
        return
      start = time.perf_counter()
      black = tf.io.encode_png(tf.zeros([*self._shape[:2], 3], tf.uint8))
      self.program(bucket)(tf.fill([bucket], black))
      self._ready.add(bucket)
    log.debug(
        "%s: batch bucket %d compiled in %.1f s", self.name, bucket, time.perf_counter() - start
    )

  def prepare(self, bucket: int) -> bool:
    """Compiles `bucket` now, or with `background` queues it for the compiler
    thread; whether it is ready."""
    if bucket not in self._ready:
      if self.background:
        self._request(bucket)
        return False
      self.compile(bucket)
    return True

  def run(self, values: List[bytes]) -> Optional[Dict[str, np.ndarray]]:
    """{output: [len(values), ...]}; None while their bucket is not compiled."""
    bucket = self.bucket(len(values))
    if bucket is None or not self.prepare(bucket):
      return None
    outputs = self._programs[bucket](tf.constant(values, tf.string))
    return {k: v.numpy() for k, v in outputs.items()}

  def _request(self, bucket: int) -> None:
    with self._lock:
      if bucket in self._requested:
        return
      self._requested.add(bucket)
      self._todo.put(bucket)
      if self._compiler is None:
        self._compiler = threading.Thread(
            target=self._compile_requested, name=f"compile-{self.name}", daemon=True
        )
        self._compiler.start()

  def close(self, wait: bool = True) -> None:
    """Stops the compiler thread after the compile in progress (`wait`: and
    waits for it): a process must not exit while XLA compiles."""
    with self._lock:
      compiler, self._compiler = self._compiler, None
      self._requested.update(self._buckets)  # nothing new is queued
    if compiler is not None:
      self._todo.put(None)
      if wait:
        compiler.join(timeout=60)

  def _compile_requested(self) -> None:
    while True:
      bucket = self._todo.get()
      if bucket is None:
        return
      try:
        self.compile(bucket)
      except Exception:  # pylint: disable=broad-except
        # The signature keeps serving this size; say why once.
        log.exception(
            "%s: compiling batch bucket %d failed; batches of that size run the signature",
            self.name,
            bucket,
        )
