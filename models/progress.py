"""Progress of a training run: one line per epoch with its metrics, the
learning rate, throughput and the time left, also written to TensorBoard."""

import os
import time
from typing import Optional

import tensorflow as tf

from models import run_log


class ProgressLogger(tf.keras.callbacks.Callback):
  """A log line per epoch: metrics, learning rate, images/second, the
  epoch's time and the time left; throughput and lr also go to TensorBoard.

  Epochs that end within `min_interval` seconds of the last line are not
  logged (a 60-epoch probe would print 60 lines in a minute), except the
  first and the last; `history` keeps every epoch, and verbose logs all.
  The engines that log every epoch say `min_interval=0`."""

  def __init__(
      self,
      name: str,
      epochs: int,
      images_per_epoch: int,
      log_dir: Optional[str] = None,
      min_interval: float = 10.0,
  ):
    super().__init__()
    self.name, self.epochs, self.images_per_epoch = name, epochs, images_per_epoch
    self.writer = (
        tf.summary.create_file_writer(os.path.join(log_dir, "progress")) if log_dir else None
    )
    self.min_interval = 0.0 if run_log.verbose_requested([]) else min_interval
    self.history = []
    self._last_line = -float("inf")

  def on_epoch_begin(self, epoch, logs=None):
    """Starts the epoch's clock."""
    self._start = time.perf_counter()

  def seconds_left(self, epochs_done: int) -> float:
    """The epochs still to run at the mean time of those run so far, leaving
    out the first (tracing and XLA compilation) once there are others."""
    seconds = [h["seconds"] for h in self.history]
    typical = seconds[1:] or seconds
    return (self.epochs - epochs_done) * sum(typical) / len(typical)

  def on_epoch_end(self, epoch, logs=None):
    """Adds the epoch to `history`, logs its line (unless one came within
    `min_interval`) and writes img/s and lr to TensorBoard."""
    seconds = time.perf_counter() - self._start
    ips = self.images_per_epoch / seconds
    opt = self.model.optimizer
    lr = opt.learning_rate  # a schedule; a (mirrored) variable under multi-worker
    lr = float(tf.convert_to_tensor(lr(opt.iterations) if callable(lr) else lr))
    self.history.append(
        dict(epoch=epoch + 1, seconds=seconds, images_per_second=ips, lr=lr, **(logs or {}))
    )
    now = time.monotonic()
    if (
        len(self.history) == 1
        or epoch + 1 == self.epochs
        or now - self._last_line >= self.min_interval
    ):
      self._last_line = now
      metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
      left = self.seconds_left(epoch + 1)
      run_log.log.info(
          "[%s] epoch %d/%d %s lr %.2e %.0f img/s %s%s",
          self.name,
          epoch + 1,
          self.epochs,
          metrics,
          lr,
          ips,
          run_log.duration(seconds),
          f", ETA {run_log.duration(left)}" if left else "",
      )
    if self.writer:
      with self.writer.as_default():
        tf.summary.scalar("images_per_second", ips, step=epoch + 1)
        tf.summary.scalar("learning_rate", lr, step=epoch + 1)
