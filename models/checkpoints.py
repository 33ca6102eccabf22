"""Resumable training: model and optimizer saved after every epoch, and the
newest readable checkpoint restored."""

from typing import Optional

import tensorflow as tf

from models import run_log


class EpochCheckpoint(tf.keras.callbacks.Callback):
  """Saves model + optimizer after every epoch so a killed run resumes.

  Every worker of a multi-worker run restores from `directory` and saves
  every epoch (saving may take part in collectives), but only the chief
  saves there: the others save into `write_directory`, their own."""

  def __init__(
      self,
      directory: str,
      model: tf.keras.Model,
      optimizer: tf.keras.optimizers.Optimizer,
      max_to_keep: int = 2,
      write_directory: Optional[str] = None,
  ):
    super().__init__()
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
    self.writer = (
        tf.train.CheckpointManager(self.checkpoint, write_directory, max_to_keep=1)
        if write_directory
        else self.manager
    )

  def restore(self) -> int:
    """Restores the newest readable checkpoint, if any; returns the epochs
    done. A checkpoint that cannot be read (e.g. a truncated file) is
    skipped with a warning for the one before it; when none can be read,
    raises rather than train on partly restored weights."""
    unreadable = []
    paths = list(self.manager.checkpoints)
    latest = self.manager.latest_checkpoint  # listed alone by older index files
    if latest and latest not in paths:
      paths.append(latest)
    for path in reversed(paths):
      try:
        self.checkpoint.restore(path).assert_consumed()
      except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        unreadable.append(f"{path}: {reason}")
        run_log.log.warning(
            "WARNING: checkpoint %s is unreadable (%s); trying the one before", path, reason
        )
        continue
      run_log.log.info("Resuming from %s (epoch %d)", path, int(self.epoch.numpy()))
      return int(self.epoch.numpy())
    if unreadable:
      raise RuntimeError(
          f"No checkpoint in {self.manager.directory} can be read; remove "
          "the folder to start afresh:\n  " + "\n  ".join(unreadable)
      )
    return 0

  def on_epoch_end(self, epoch, logs=None):
    """Saves model, optimizer and the epochs done as checkpoint `epoch + 1`:
    into `directory`, or on a worker given one, its `write_directory`."""
    self.epoch.assign(epoch + 1)
    self.writer.save(checkpoint_number=epoch + 1)
