"""Merges concurrent predict requests into one model call.

No timer: a request that finds the model idle runs at once, so a lone client
pays no batching delay. Requests that arrive while a call runs queue up and
go together in the next call (up to `max_batch` instances), which is where
batching pays: one [B] call costs far less than B calls of one image. A
request of more than `max_batch` instances is cut into calls of `max_batch`
that run side by side on the model threads, so one big request uses every
core.

A batch that fails on bad input (an instance that is not an image) is re-run
request by request, so only the request with the bad instance fails, with
the instance named by its index in the request; the others get their
results.

Queued work is bounded (`max_queued` instances waiting for the model): past
it a request is refused at once with `Overloaded`, which says when to retry,
instead of every request waiting longer (load shedding).
"""

import asyncio
import collections
import concurrent.futures
import math
import time
from typing import Dict, List, NamedTuple, Tuple

import numpy as np
import tensorflow as tf

from serving.model_store import MAX_BATCH, LoadedModel


class BadInstance(ValueError):
  """An instance the model cannot take (a 400 for the client)."""


class Overloaded(RuntimeError):
  """More work is queued than the bound (a 503 for the client, who should
  retry after `retry_after` seconds)."""

  def __init__(self, message: str, retry_after: int):
    super().__init__(message)
    self.retry_after = retry_after


class _Part(NamedTuple):
  """A request, or a `max_batch` part of a bigger one, waiting for a call."""

  model: LoadedModel
  values: List[bytes]
  offset: int  # of its first value in the request
  future: asyncio.Future


class Batcher:
  """`await batcher.run(model, signature, values)` -> {output: [len(values), ...]}."""

  def __init__(self, max_batch: int = MAX_BATCH, threads: int = 1, max_queued: int = 512):
    if max_queued < max_batch:
      raise ValueError(f"max_queued ({max_queued}) must be at least max_batch ({max_batch})")
    self.max_batch, self.max_queued = max_batch, max_queued
    # `threads` model calls at once. One when TensorFlow spreads each call
    # over all cores (its intra-op threads); one per core when each call
    # runs on one (the server's default: a small call pays no thread
    # handoffs, and two calls keep two cores busy).
    self._executor = concurrent.futures.ThreadPoolExecutor(threads, "model")
    self._free_threads = asyncio.Semaphore(threads)
    self._pending: Dict[Tuple[int, str], collections.deque] = {}
    self._active = set()
    self.calls = 0  # model calls made (for tests and the benchmark)
    self.instances = 0
    self.queued = 0  # instances waiting for a model call
    self.shed = 0  # requests refused with Overloaded
    self._seconds_per_instance = 0.0  # running mean of recent model calls

  def check_capacity(self) -> None:
    """Raises Overloaded when the queue is full, before a request's body is
    even read: shedding must cost less than serving."""
    if self.queued >= self.max_queued:
      self._shed()

  def _shed(self):
    self.shed += 1
    wait = self.queued * self._seconds_per_instance
    raise Overloaded(
        f"server overloaded: {self.queued} instances already queued "
        f"(bound {self.max_queued}); retry later",
        retry_after=max(1, math.ceil(wait)),
    )

  async def run(
      self, model: LoadedModel, signature: str, values: List[bytes]
  ) -> Dict[str, np.ndarray]:
    """`model`'s `signature` on `values`, in a call shared with other requests.

    Returns {output: [len(values), ...]}. Raises BadInstance naming the bad
    instances by their index (or when `values` alone exceed `max_queued`), and
    Overloaded when the queue has no room for them.
    """
    if len(values) > self.max_queued:
      raise BadInstance(
          f"{len(values)} instances in one request; this server takes at "
          f"most {self.max_queued}: send them in several requests"
      )
    if self.queued + len(values) > self.max_queued:
      self._shed()
    loop = asyncio.get_running_loop()
    key = (model.version, signature)
    queue = self._pending.setdefault(key, collections.deque())
    parts = []
    for start in range(0, len(values), self.max_batch):
      parts.append(loop.create_future())
      queue.append(_Part(model, values[start : start + self.max_batch], start, parts[-1]))
    self.queued += len(values)
    if key not in self._active:
      self._active.add(key)
      loop.create_task(self._drain(key))
    if len(parts) == 1:
      return await parts[0]
    results = await asyncio.gather(*parts, return_exceptions=True)
    bad = [r for r in results if isinstance(r, BadInstance)]
    if bad:  # every bad instance of the request, not only the first part's
      raise BadInstance("; ".join(str(e) for e in bad))
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
      raise failed
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

  def close(self) -> None:
    """Stops the model threads without waiting; calls not yet started are cancelled."""
    self._executor.shutdown(wait=False, cancel_futures=True)

  async def _drain(self, key) -> None:
    queue = self._pending[key]
    try:
      while queue:
        await self._free_threads.acquire()
        if not queue:
          self._free_threads.release()
          break
        batch, size = [], 0
        while queue and (not batch or size + len(queue[0].values) <= self.max_batch):
          part = queue.popleft()
          batch.append(part)
          size += len(part.values)
        self.queued -= size
        running = asyncio.get_running_loop().create_task(self._run_batch(batch, signature=key[1]))
        running.add_done_callback(lambda _: self._free_threads.release())
    finally:
      self._active.discard(key)

  async def _run_batch(self, batch: List[_Part], signature: str) -> None:
    model = batch[0].model
    values = [v for part in batch for v in part.values]
    try:
      outputs = await self._call(model, signature, values)
    except tf.errors.InvalidArgumentError:
      for part in batch:  # isolate the request(s) with bad instances
        await self._run_alone(model, signature, part)
      return
    except Exception as e:  # pylint: disable=broad-except
      for part in batch:
        if not part.future.done():
          part.future.set_exception(e)
      return
    start = 0
    for part in batch:
      if not part.future.done():
        part.future.set_result({k: v[start : start + len(part.values)] for k, v in outputs.items()})
      start += len(part.values)

  async def _run_alone(self, model, signature, part: _Part) -> None:
    """One request (or part of one) on its own; its bad instances are named
    in a BadInstance by their index in the request."""
    values, offset, future = part.values, part.offset, part.future
    self.calls += 1  # the re-runs that find a bad instance count once
    self.instances += len(values)
    try:
      outputs, _, errors = await asyncio.get_running_loop().run_in_executor(
          self._executor, model.run_isolating_errors, signature, values
      )
    except Exception as e:  # pylint: disable=broad-except
      if not future.done():
        future.set_exception(e)
      return
    if future.done():
      return
    if errors:
      future.set_exception(
          BadInstance(
              "; ".join(
                  f"instances[{offset + i}]: {message}" for i, message in sorted(errors.items())
              )
          )
      )
    else:
      future.set_result(outputs)

  async def _call(self, model: LoadedModel, signature: str, values: List[bytes]):
    self.calls += 1
    self.instances += len(values)
    start = time.perf_counter()
    outputs = await asyncio.get_running_loop().run_in_executor(
        self._executor, model.run, signature, values
    )
    per_instance = (time.perf_counter() - start) / len(values)
    self._seconds_per_instance = (
        0.8 * self._seconds_per_instance + 0.2 * per_instance
        if self._seconds_per_instance
        else per_instance
    )
    return outputs
