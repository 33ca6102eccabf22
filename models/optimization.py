"""The optimiser of both engines: warm-up + cosine learning rate, the MAE
batch-size scaling rule, and AdamW whose weight decay follows the schedule."""

import math
from typing import Iterable

import tensorflow as tf


class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak_lr`, then half-cosine down to `min_lr`."""

  def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0):
    self.peak_lr = float(peak_lr)
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.min_lr = float(min_lr)

  def __call__(self, step):
    """The learning rate at `step`, a float32 scalar."""
    step = tf.cast(step, tf.float32)
    warmup = self.peak_lr * step / max(self.warmup_steps, 1)
    progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
    progress = tf.clip_by_value(progress, 0.0, 1.0)
    cosine = self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    return tf.where(step < self.warmup_steps, warmup, cosine)

  def get_config(self):
    """The constructor's arguments, for Keras to rebuild the schedule."""
    return dict(
        peak_lr=self.peak_lr,
        total_steps=self.total_steps,
        warmup_steps=self.warmup_steps,
        min_lr=self.min_lr,
    )


def scaled_lr(base_lr: float, global_batch: int) -> float:
  """The MAE scaling rule: lr = base_lr * batch / 256."""
  return base_lr * global_batch / 256.0


def no_decay(variable: tf.Variable) -> bool:
  """Biases, norm scales/offsets and embeddings are not weight-decayed."""
  name = variable.name
  return (
      len(variable.shape) <= 1
      or "mask_token" in name
      or "cls_token" in name
      or "pos_embed" in name
      or "norm" in name
  )


def adamw(
    schedule, weight_decay: float, beta_1: float, beta_2: float, variables: Iterable[tf.Variable]
) -> tf.keras.optimizers.Optimizer:
  """AdamW whose decoupled decay is `lr(t) * weight_decay * w` (it follows the
  schedule), skipping the variables `no_decay` selects."""
  opt = tf.keras.optimizers.AdamW(
      learning_rate=schedule, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2
  )
  opt.exclude_from_weight_decay(var_list=[v for v in variables if no_decay(v)])
  return opt
