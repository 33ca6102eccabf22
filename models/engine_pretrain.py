"""MAE pretraining: the train step, the loop and what it saves.

  model, history = pretrain(cfg, images, log_dir, checkpoint_dir)
  save_mae(model.mae, directory); mae = load_mae(directory)

`PretrainingModel` runs the MAE's objective under Keras `fit`: gradients
scaled for replicas and mixed precision, optionally as several XLA programs
on micro-batches (`runtime.xla_splits`). `pretrain` adds the optimizer
(AdamW, warmup + cosine), precision policy, distribution strategy, per-epoch
progress, TensorBoard and resumable epoch checkpoints (`models.optimization`,
`models.precision`, `models.runtime`, `models.progress`, `models.checkpoints`).
No TFX types: the Trainer's run_fn (`components/mae_trainer.py`), the
benchmarks and the notebooks call these functions directly.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from models import config as config_lib
from models import (
    checkpoints,
    data,
    files,
    names,
    optimization,
    precision,
    progress,
    run_log,
    runtime,
)
from models.joint_embedding import build_mae, teacher_momentum, teacher_of
from models.mae import MaskedAutoencoder


class PretrainingModel(tf.keras.Model):
  """`fit` on batches of images (or (images, noise [B, L]) to fix the masks)
  trains `self.mae` on its loss. A multi-crop batch is a dict of global
  views and local views (`data.Augmentation`)."""

  def __init__(
      self,
      mae: MaskedAutoencoder,
      xla_splits: int = 1,
      seed: int = 0,
      total_steps: int = 1,
      **kwargs,
  ):
    """`xla_splits` > 1: each step computes gradients as that many
    jit-compiled micro-batch programs (see `_split_loss_and_gradients`).
    Masks not given with the batch are drawn from (`seed`, step, replica):
    a resumed run masks as the uninterrupted one did. `total_steps`: where
    a momentum teacher's momentum reaches 1."""
    super().__init__(**kwargs)
    self.mae = mae
    self.xla_splits = xla_splits
    self.seed = seed
    self.total_steps = total_steps
    self._split_gradients = self._xla_apply_gradients = None
    self.loss_tracker = tf.keras.metrics.Mean(name="loss")

  def call(self, imgs, training=False, noise=None):
    """The MAE's (loss, pred, mask) on `imgs` (see `MaskedAutoencoder.call`)."""
    return self._mae_loss(imgs, training, noise)

  def _mae_loss(self, imgs, training, noise, local_views=None):
    if isinstance(imgs, dict):  # a multi-crop batch
      imgs, local_views = imgs[data.VIEWS_KEY], imgs[data.LOCAL_VIEWS_KEY]
    extra = {} if local_views is None else {"local_views": local_views}
    return self.mae(imgs, training=training, noise=noise, **extra)

  @property
  def metrics(self):
    """The mean loss: what `fit` reports, and resets every epoch."""
    return [self.loss_tracker]

  def train_step(self, batch):
    """One optimizer step on images, or (images, noise [B, L]) to fix the
    masks; returns the epoch's mean loss so far."""
    imgs, noise = batch if isinstance(batch, tuple) else (batch, None)
    local = None
    if isinstance(imgs, dict):
      imgs, local = imgs[data.VIEWS_KEY], imgs[data.LOCAL_VIEWS_KEY]
    if noise is None:
      noise = self.mask_noise(imgs)
    if self.xla_splits == 1:
      loss, grads = self._loss_and_gradients(imgs, noise, local)
      self._apply_gradients(grads)
    else:
      loss, grads = self._split_loss_and_gradients(imgs, noise, local)
      self._xla_apply_gradients(grads)
    self.loss_tracker.update_state(loss)
    return {"loss": self.loss_tracker.result()}

  def mask_noise(self, imgs: tf.Tensor) -> tf.Tensor:
    """Stateless masking noise [B, L] (or [B, 2, L] for two views) for this
    step and replica (`random_masking` keeps the patches of smallest noise)."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    step = tf.cast(self.optimizer.iterations, tf.int32)
    seed = tf.stack([tf.constant(self.seed, tf.int32), step * 1024 + replica])
    shape = tf.concat([tf.shape(imgs)[:-3], [self.mae.cfg.num_patches]], axis=0)
    return tf.random.stateless_uniform(shape, seed)

  def test_step(self, imgs):
    """The loss on images under random masks, no update; returns the mean so far."""
    loss, _, _ = self._mae_loss(imgs, False, None)
    self.loss_tracker.update_state(loss)
    return {"loss": self.loss_tracker.result()}

  def _loss_and_gradients(self, imgs, noise, local_views=None):
    """(batch mean loss, gradients of this replica's share of the global loss)."""
    opt = self.optimizer
    scaled = isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer)
    with tf.GradientTape() as tape:
      loss, _, _ = self._mae_loss(imgs, True, noise, local_views)
      # Gradients are summed over replicas: scale each replica's mean loss so
      # the sum is the gradient of the global-batch mean.
      replica_loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
      if scaled:
        replica_loss = opt.get_scaled_loss(replica_loss)
    grads = tape.gradient(replica_loss, self.trainable_variables)
    return loss, (opt.get_unscaled_gradients(grads) if scaled else grads)

  def _apply_gradients(self, grads):
    # The optimizer is built before training, so this creates no variables;
    # a LossScaleOptimizer skips the step on non-finite gradients here.
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    if teacher_of(self.mae) is not None:  # the teacher follows the updated student
      self.mae.update_teacher(
          teacher_momentum(
              self.mae.cfg.teacher_momentum,
              tf.cast(self.optimizer.iterations, tf.float32) / self.total_steps,
          )
      )

  def _split_loss_and_gradients(self, imgs, noise, local_views=None):
    """The same as `_loss_and_gradients` on B / n equal micro-batches, each
    one XLA program. XLA:CPU runs its reductions (LayerNorm, softmax, the
    weight gradients) on one thread, so one whole-batch program leaves cores
    idle; independent programs run side by side on TF's inter-op threads.
    Every image masks the same number of patches, so the mean of the
    micro-batch losses is the batch loss of the pure MAE; a contrastive
    term's negatives are the other images of the micro-batch (B / n - 1 of
    them, not B - 1)."""
    n = self.xla_splits
    if self._split_gradients is None:
      self._split_gradients = tf.function(self._loss_and_gradients, jit_compile=True)
      # One fused program for AdamW too (Keras runs it per variable on CPU).
      self._xla_apply_gradients = tf.function(self._apply_gradients, jit_compile=True)
    noises = tf.split(noise, n) if noise is not None else [None] * n
    locals_ = tf.split(local_views, n) if local_views is not None else [None] * n
    outs = [self._split_gradients(i, z, v) for i, z, v in zip(tf.split(imgs, n), noises, locals_)]
    loss = tf.add_n([o[0] for o in outs]) / n
    grads = [tf.add_n(list(g)) / n for g in zip(*[o[1] for o in outs])]
    return loss, grads


def compile_mae(
    cfg: config_lib.RunConfig, strategy: tf.distribute.Strategy, steps_per_epoch: int
) -> PretrainingModel:
  """A new MAE ready to `fit`, with its AdamW and warmup-cosine schedule for
  the global batch (batch_size per replica x replicas). Call inside
  `strategy.scope()` and the precision policy."""
  p = cfg.pretrain
  global_batch = p.batch_size * strategy.num_replicas_in_sync
  jit = runtime.use_xla(strategy, cfg.runtime.jit_compile)
  splits = cfg.runtime.xla_splits if jit else 1
  if splits < 1 or p.batch_size % splits:
    raise ValueError(
        f"runtime.xla_splits must divide pretrain.batch_size "
        f"{p.batch_size}; got {cfg.runtime.xla_splits}"
    )
  model = PretrainingModel(
      build_mae(cfg.model),
      xla_splits=splits,
      seed=cfg.runtime.seed,
      total_steps=steps_per_epoch * p.epochs,
  )
  schedule = optimization.WarmupCosine(
      optimization.scaled_lr(p.base_lr, global_batch),
      total_steps=steps_per_epoch * p.epochs,
      warmup_steps=round(p.warmup_epochs * steps_per_epoch),
      min_lr=p.min_lr,
  )
  optimizer = optimization.adamw(
      schedule, p.weight_decay, p.beta_1, p.beta_2, model.trainable_variables
  )
  optimizer.build(model.trainable_variables)
  # With splits, the micro-batch programs are the XLA parts of the step.
  model.compile(optimizer=optimizer, jit_compile=jit and splits == 1)
  return model


def augmentation(cfg: config_lib.RunConfig) -> data.Augmentation:
  """The pretraining batches' augmentation; two views of each image (and
  the local views, if any) when the MAE has a contrastive term."""
  p = cfg.pretrain
  return data.Augmentation(
      p.crop_min_scale,
      p.color_jitter,
      views=2 if cfg.model.contrastive_weight else 1,
      hue_jitter=p.hue_jitter,
      local_views=p.local_views,
      local_view_size=p.local_view_size,
      local_crop_scale=(p.local_crop_min_scale, p.local_crop_max_scale),
      downsample_prob=p.downsample_prob,
      downsample_min_scale=p.downsample_min_scale,
  )


def checkpoint_dir(root: str, cfg: config_lib.RunConfig, data_ids: Sequence[str]) -> str:
  """A directory under `root` keyed by the training config and the data
  (`data_ids`: e.g. the Transform graph and the example files), so a re-run
  after a crash resumes instead of starting over, and any change starts
  afresh. `cfg`'s precision must be resolved: a run resumed on another kind
  of machine (GPU: loss-scaled optimizer) starts its own checkpoints."""
  key = hashlib.sha256(
      json.dumps([cfg.trainer_config(), list(data_ids)], sort_keys=True).encode()
  ).hexdigest()[:16]
  return os.path.join(root, f"mae-{key}")


def pretrain(
    cfg: config_lib.RunConfig,
    images: Union[np.ndarray, data.TrainingImages],
    log_dir: str,
    checkpoint_dir: str,
    callbacks: Iterable[tf.keras.callbacks.Callback] = (),
    initial_mae: Optional[str] = None,
) -> Tuple[PretrainingModel, List[dict]]:
  """Pretrains an MAE on Transform-normalised images: an array [N, S, S, 3],
  or `data.TrainingImages` (in memory or streamed, `data.training_images`).
  Resumes from the newest checkpoint in `checkpoint_dir`, else starts from
  the weights of `initial_mae` (a `save_mae` directory: a warm start) when
  given; returns the trained `PretrainingModel` (`.mae` is the MAE) and one
  history row per epoch run (loss, lr, images/second)."""
  runtime.require_keras2()
  if isinstance(images, np.ndarray):
    images = data.TrainingImages.in_memory(images)
  cfg = precision.with_resolved_precision(cfg)
  p, rt = cfg.pretrain, cfg.runtime
  tf.keras.utils.set_random_seed(rt.seed)
  strategy = runtime.make_strategy(rt.strategy)
  global_batch = p.batch_size * strategy.num_replicas_in_sync
  steps_per_epoch = p.steps_per_epoch or images.count // global_batch
  if steps_per_epoch < 1:
    raise ValueError(f"{images.count} training images do not fill one batch of {global_batch}")
  with precision.precision_policy(rt.precision), strategy.scope():
    model = compile_mae(cfg, strategy, steps_per_epoch)
    chief = runtime.is_chief(strategy)
    if not chief:  # a worker's own scratch space: only the chief writes the run's
      scratch = tempfile.mkdtemp(prefix="mae-worker-")
      log_dir = os.path.join(scratch, "logs")
    # The MAE itself (not the wrapper) is checkpointed: the same layout as
    # `save_mae`'s weights plus the optimizer.
    checkpoint = checkpoints.EpochCheckpoint(
        checkpoint_dir,
        model.mae,
        model.optimizer,
        write_directory=None if chief else os.path.join(scratch, "checkpoints"),
    )
    initial_epoch = checkpoint.restore()
    if initial_mae and initial_epoch == 0:
      _read_weights(model.mae, initial_mae)
    # In memory, batch t is a function of (seed, t): resumed, the run goes on
    # with the batches it would have seen.
    dataset = images.batches(
        global_batch, augmentation(cfg), seed=rt.seed, first_step=initial_epoch * steps_per_epoch
    )
    logger = progress.ProgressLogger(
        names.MAE_TRAINER, p.epochs, steps_per_epoch * global_batch, log_dir, min_interval=0
    )
    n_params = sum(int(tf.size(v)) for v in model.trainable_variables)
    run_log.log.info(
        "[%s] %.2fM parameters, %d images, %d steps/epoch of %d, %d epochs, %s, %d replica(s)",
        names.MAE_TRAINER,
        n_params / 1e6,
        images.count,
        steps_per_epoch,
        global_batch,
        p.epochs,
        rt.precision,
        strategy.num_replicas_in_sync,
    )
    model.fit(
        dataset,
        epochs=p.epochs,
        steps_per_epoch=steps_per_epoch,
        initial_epoch=initial_epoch,
        verbose=0,
        callbacks=[
            logger,
            checkpoint,
            tf.keras.callbacks.TensorBoard(log_dir, update_freq="epoch"),
            *callbacks,
        ],
    )
  return model, logger.history


# --------------------------------------------------------------------------
# The saved MAE: `config.json` (its ModelConfig) + `weights/` (a checkpoint)
# --------------------------------------------------------------------------
# ModelConfig fields added after MAEs were saved, with the value an MAE saved
# without them was trained with (the dataclass default may differ since).
SAVED_BEFORE_FIELD = {
    "contrastive_weight": 0.0,
    "uniformity_weight": 0.0,
    "teacher_momentum": 0.0,
    "contrastive_blocks": 1,
}


def save_mae(
    mae: MaskedAutoencoder, directory: str, training: Optional[Dict[str, Any]] = None
) -> None:
  """Writes the MAE's config and weights to `directory`, and `training`
  (what it was trained on: `warm_start_source` reads it) when given."""
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, names.MAE_CONFIG_FILE), "w") as f:
    json.dump(dataclasses.asdict(mae.cfg), f, indent=2, sort_keys=True)
  tf.train.Checkpoint(model=mae).write(os.path.join(directory, names.MAE_WEIGHTS_PREFIX))
  if training is not None:
    files.write_json(training, os.path.join(directory, names.MAE_TRAINING_FILE))


def read_mae_config(directory: str) -> config_lib.ModelConfig:
  """The ModelConfig of the MAE `save_mae` wrote to `directory`."""
  path = os.path.join(directory, names.MAE_CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {directory} is not an MAE "
        "saved by the mae_pretrain Trainer (save_mae)"
    )
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  # A field the saved config lacks predates it: the value that was then implied.
  return config_lib.ModelConfig(**{**SAVED_BEFORE_FIELD, **saved})


def _read_weights(model: MaskedAutoencoder, directory: str) -> None:
  # The epoch checkpoints also hold the optimizer's slots, not needed here.
  tf.train.Checkpoint(model=model).read(
      os.path.join(directory, names.MAE_WEIGHTS_PREFIX)
  ).assert_existing_objects_matched().expect_partial()


def load_mae(directory: str) -> MaskedAutoencoder:
  """Rebuilds the MAE saved by `save_mae` (in the current precision policy)."""
  model = build_mae(read_mae_config(directory))
  _read_weights(model, directory)
  return model


def warm_start_source(
    cfg: config_lib.RunConfig, blessed_model: Optional[str], data_digest: str
) -> Tuple[Optional[str], str]:
  """(the saved MAE a run starts from, or None for from scratch; why).
  `blessed_model`: the serving dir of the blessed linear probe model the
  pipeline resolved (None: none), which carries its MAE
  (`names.carried_mae_dir`); `data_digest`: this run's examples
  (`examples.files_digest`). The MAE must have this config's architecture
  and have been trained on other examples."""
  if cfg.pretrain.warm_start == "never":
    return None, "pretrain.warm_start is never"
  if not blessed_model:
    return None, "no blessed model trained on an earlier span"
  mae_dir = names.carried_mae_dir(blessed_model)
  if not tf.io.gfile.exists(os.path.join(mae_dir, names.MAE_CONFIG_FILE)):
    return None, f"the blessed model {blessed_model} carries no MAE ({mae_dir})"
  differences = config_lib.architecture_differences(read_mae_config(mae_dir), cfg.model)
  if differences:
    return None, (
        f"the blessed model's MAE ({mae_dir}) has another architecture: "
        + ", ".join(f"model.{k} {a} (now {b})" for k, (a, b) in differences.items())
    )
  training_file = os.path.join(mae_dir, names.MAE_TRAINING_FILE)
  if tf.io.gfile.exists(training_file):
    with tf.io.gfile.GFile(training_file) as f:
      if json.load(f).get("data_digest") == data_digest:
        return None, f"the blessed model's MAE ({mae_dir}) was trained on these same examples"
  return mae_dir, f"the MAE of the latest blessed model, {mae_dir}"


def warm_start(
    cfg: config_lib.RunConfig, blessed_model: Optional[str], data_digest: str
) -> Tuple[config_lib.RunConfig, Optional[str], Dict[str, Optional[str]]]:
  """The warm-start rule of a run (`warm_start_source` decides): (the config
  to train with, `pretrain.warm_start_epochs` as its epochs when it starts
  from a blessed model's MAE; that MAE's directory or None; {source,
  reason} for the run's summary). Logs which."""
  source, reason = warm_start_source(cfg, blessed_model, data_digest)
  if source:
    cfg = dataclasses.replace(
        cfg, pretrain=dataclasses.replace(cfg.pretrain, epochs=cfg.pretrain.warm_start_epochs)
    )
    run_log.log.info(
        "[%s] warm start from %s: %d epochs", names.MAE_TRAINER, reason, cfg.pretrain.epochs
    )
  else:
    run_log.log.info("[%s] from scratch: %s", names.MAE_TRAINER, reason)
  return cfg, source, dict(source=source, reason=reason)
