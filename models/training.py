"""Training machinery shared by the pretraining and probe engines: precision,
distribution, learning-rate schedule, AdamW, progress logging, resumable
checkpoints and summaries."""

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Iterable, Optional

import tensorflow as tf

from models import config as config_lib


# --------------------------------------------------------------------------
# Where and how to run
# --------------------------------------------------------------------------
def require_keras2() -> None:
  """The models are Keras 2 (tf_keras), what TFX 1.16 uses. TensorFlow binds
  tf.keras when first imported, so a program that imports it before setting
  TF_USE_LEGACY_KERAS=1 gets Keras 3 and fails later in obscure ways."""
  if not tf.keras.__name__.startswith("tf_keras"):
    raise RuntimeError(
        f"tf.keras is {tf.keras.__name__}, not tf_keras (Keras 2): set "
        "TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported (importing "
        "the `models`, `pipeline` or `components` package first does it)")


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether the CPU computes bfloat16 itself (AVX512-BF16 or AMX-BF16: Intel
  Cooper Lake and Sapphire Rapids on, AMD Zen 4 on). Elsewhere oneDNN emulates
  bf16 through float32, no faster. False where /proc/cpuinfo does not exist."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("flags"):
          return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
  except OSError:
    pass
  return False


def resolve_precision(precision: str, strategy: str,
                      cpuinfo: str = "/proc/cpuinfo") -> str:
  """The Keras policy for runtime.precision: explicit names as they are;
  "auto" is mixed_bfloat16 on TPU, mixed_float16 on GPU (bf16 needs Ampere or
  newer, fp16 runs on every CUDA GPU), and on CPU mixed_bfloat16 only with
  native bf16, else float32."""
  if precision != "auto":
    return precision
  if strategy == "tpu":
    return "mixed_bfloat16"
  if tf.config.list_physical_devices("GPU"):
    return "mixed_float16"
  return "mixed_bfloat16" if cpu_has_native_bfloat16(cpuinfo) else "float32"


def with_resolved_precision(cfg: config_lib.RunConfig) -> config_lib.RunConfig:
  """`cfg` with runtime.precision "auto" replaced by the policy it resolves to
  here, so logs, summaries and checkpoint keys name what actually ran."""
  rt = cfg.runtime
  return dataclasses.replace(cfg, runtime=dataclasses.replace(
      rt, precision=resolve_precision(rt.precision, rt.strategy)))


@contextlib.contextmanager
def precision_policy(name: str):
  """Sets the global Keras mixed-precision policy inside the block only."""
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


_multi_worker_strategy: Optional[tf.distribute.Strategy] = None


def make_strategy(name: str) -> tf.distribute.Strategy:
  """`default` (one device), `mirrored` (all local GPUs/CPUs),
  `multi_worker` (TF_CONFIG cluster) or `tpu`."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    # All local GPUs; without any, all logical CPU devices (one per replica).
    devices = (tf.config.list_logical_devices("GPU")
               or tf.config.list_logical_devices("CPU"))
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == "multi_worker":
    # One per process: it joins the cluster (TF_CONFIG) once, at creation.
    global _multi_worker_strategy  # pylint: disable=global-statement
    if _multi_worker_strategy is None:
      _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return _multi_worker_strategy
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"Unknown distribution strategy {name!r}; expected one of "
                   "default, mirrored, multi_worker, tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's outputs: always, except on the
  non-chief workers of a multi-worker run (which train in step with the
  chief, and whose copies of the outputs would collide with its)."""
  return bool(strategy.extended.should_checkpoint)


def use_xla(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
  """XLA for the train step, unless replicas are CPU devices: XLA:CPU cannot
  reach a variable mirrored on another logical CPU device (XLA known issue
  "tf.Variable on a different device")."""
  if (jit_compile and strategy.num_replicas_in_sync > 1
      and all("CPU" in d.upper() for d in strategy.extended.worker_devices)):
    logging.warning("jit_compile ignored: %d replicas on CPU devices",
                    strategy.num_replicas_in_sync)
    return False
  return jit_compile


# --------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------
class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak_lr`, then half-cosine down to `min_lr`."""

  def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int,
               min_lr: float = 0.0):
    self.peak_lr = float(peak_lr)
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.min_lr = float(min_lr)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = self.peak_lr * step / max(self.warmup_steps, 1)
    progress = (step - self.warmup_steps) / max(
        self.total_steps - self.warmup_steps, 1)
    progress = tf.clip_by_value(progress, 0.0, 1.0)
    cosine = self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (
        1.0 + tf.cos(math.pi * progress))
    return tf.where(step < self.warmup_steps, warmup, cosine)

  def get_config(self):
    return dict(peak_lr=self.peak_lr, total_steps=self.total_steps,
                warmup_steps=self.warmup_steps, min_lr=self.min_lr)


def scaled_lr(base_lr: float, global_batch: int) -> float:
  """The MAE scaling rule: lr = base_lr * batch / 256."""
  return base_lr * global_batch / 256.0


def no_decay(variable: tf.Variable) -> bool:
  """Biases, norm scales/offsets and embeddings are not weight-decayed."""
  name = variable.name
  return (len(variable.shape) <= 1 or "mask_token" in name
          or "cls_token" in name or "pos_embed" in name or "norm" in name)


def adamw(schedule, weight_decay: float, beta_1: float, beta_2: float,
          variables: Iterable[tf.Variable]) -> tf.keras.optimizers.Optimizer:
  """AdamW whose decoupled decay is `lr(t) * weight_decay * w` (it follows the
  schedule), skipping the variables `no_decay` selects."""
  opt = tf.keras.optimizers.AdamW(learning_rate=schedule,
                                  weight_decay=weight_decay,
                                  beta_1=beta_1, beta_2=beta_2)
  opt.exclude_from_weight_decay(var_list=[v for v in variables if no_decay(v)])
  return opt


# --------------------------------------------------------------------------
# Progress and checkpoints
# --------------------------------------------------------------------------
class ProgressLogger(tf.keras.callbacks.Callback):
  """One log line per epoch with the metrics, lr and images/second; the
  throughput also goes to TensorBoard."""

  def __init__(self, name: str, epochs: int, images_per_epoch: int,
               log_dir: Optional[str] = None):
    super().__init__()
    self.name, self.epochs, self.images_per_epoch = name, epochs, images_per_epoch
    self.writer = (tf.summary.create_file_writer(os.path.join(log_dir, "progress"))
                   if log_dir else None)
    self.history = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    seconds = time.perf_counter() - self._start
    ips = self.images_per_epoch / seconds
    opt = self.model.optimizer
    lr = opt.learning_rate         # a schedule; a (mirrored) variable under multi-worker
    lr = float(tf.convert_to_tensor(lr(opt.iterations) if callable(lr) else lr))
    metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
    logging.info("[%s] epoch %d/%d %s lr %.2e %.0f img/s %.1f s", self.name,
                 epoch + 1, self.epochs, metrics, lr, ips, seconds)
    print(f"[{self.name}] epoch {epoch + 1}/{self.epochs} {metrics} "
          f"lr {lr:.2e} {ips:.0f} img/s {seconds:.1f} s", flush=True)
    self.history.append(dict(epoch=epoch + 1, seconds=seconds,
                             images_per_second=ips, lr=lr, **(logs or {})))
    if self.writer:
      with self.writer.as_default():
        tf.summary.scalar("images_per_second", ips, step=epoch + 1)
        tf.summary.scalar("learning_rate", lr, step=epoch + 1)


class EpochCheckpoint(tf.keras.callbacks.Callback):
  """Saves model + optimizer after every epoch so a killed run resumes.

  Every worker of a multi-worker run restores from `directory` and saves
  every epoch (saving may take part in collectives), but only the chief
  saves there: the others save into `write_directory`, their own."""

  def __init__(self, directory: str, model: tf.keras.Model,
               optimizer: tf.keras.optimizers.Optimizer, max_to_keep: int = 2,
               write_directory: Optional[str] = None):
    super().__init__()
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                          epoch=self.epoch)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                              max_to_keep=max_to_keep)
    self.writer = (tf.train.CheckpointManager(self.checkpoint, write_directory,
                                              max_to_keep=1)
                   if write_directory else self.manager)

  def restore(self) -> int:
    """Restores the newest readable checkpoint, if any; returns the epochs
    done. A checkpoint that cannot be read (e.g. a truncated file) is
    skipped with a warning for the one before it; when none can be read,
    raises rather than train on partly restored weights."""
    unreadable = []
    paths = list(self.manager.checkpoints)
    latest = self.manager.latest_checkpoint     # listed alone by older index files
    if latest and latest not in paths:
      paths.append(latest)
    for path in reversed(paths):
      try:
        self.checkpoint.restore(path).assert_consumed()
      except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        unreadable.append(f"{path}: {reason}")
        logging.warning("Checkpoint %s is unreadable (%s); trying the one before", path,
                        reason)
        print(f"WARNING: checkpoint {path} is unreadable ({reason}); trying the one "
              "before", flush=True)
        continue
      logging.info("Resumed from %s at epoch %d", path, int(self.epoch.numpy()))
      print(f"Resuming from {path} (epoch {int(self.epoch.numpy())})", flush=True)
      return int(self.epoch.numpy())
    if unreadable:
      raise RuntimeError(f"No checkpoint in {self.manager.directory} can be read; remove "
                         "the folder to start afresh:\n  " + "\n  ".join(unreadable))
    return 0

  def on_epoch_end(self, epoch, logs=None):
    self.epoch.assign(epoch + 1)
    self.writer.save(checkpoint_number=epoch + 1)


def write_atomically(path: str, contents) -> None:
  """Writes `contents` (str or bytes) to `path`, local or GCS, through a
  temporary name, so a reader never sees half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "wb" if isinstance(contents, bytes) else "w") as f:
    f.write(contents)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json(obj, path: str) -> None:
  write_atomically(path, json.dumps(obj, indent=2, default=float))
