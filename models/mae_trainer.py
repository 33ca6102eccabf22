"""Trainer "mae_pretrain": the run_fn that pretrains the MAE.

Output (the Model artifact's serving dir): `config.json` (the ModelConfig)
and `weights/` (a tf.train.Checkpoint of the whole MAE), read back by
`load_mae` in the linear-probe Trainer and the benchmarks, plus
`train_summary.json` and `reconstructions.png` (also in the ModelRun dir,
whose TensorBoard logs show the reconstructions of every epoch).
"""

import dataclasses
import hashlib
import json
import logging
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from models import config as config_lib
from models import data, training, visualize
from models.mae import MaskedAutoencoder

CONFIG_FILE = "config.json"
WEIGHTS_PREFIX = os.path.join("weights", "mae")
SUMMARY_FILE = "train_summary.json"
RECONSTRUCTIONS_FILE = "reconstructions.png"


def save_mae(model: MaskedAutoencoder, directory: str) -> None:
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(dataclasses.asdict(model.cfg), f, indent=2, sort_keys=True)
  tf.train.Checkpoint(model=model).write(os.path.join(directory, WEIGHTS_PREFIX))


def load_mae(directory: str) -> MaskedAutoencoder:
  """Rebuilds the MAE saved by `save_mae` (in the current precision policy)."""
  path = os.path.join(directory, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not an MAE "
                            "exported by the mae_pretrain Trainer")
  with tf.io.gfile.GFile(path) as f:
    cfg = config_lib.ModelConfig(**json.load(f))
  model = MaskedAutoencoder(cfg).build_for()
  # The checkpoint also holds the optimizer's slots, not needed here.
  tf.train.Checkpoint(model=model).read(
      os.path.join(directory, WEIGHTS_PREFIX)
  ).assert_existing_objects_matched().expect_partial()
  return model


def _checkpoint_dir(fn_args: FnArgs, cfg: config_lib.RunConfig) -> str:
  """A directory that outlives this execution, keyed by config and data, so a
  re-run after a crash resumes instead of starting over."""
  root = (fn_args.custom_config or {}).get(config_lib.CHECKPOINT_ROOT_KEY)
  if not root:
    return os.path.join(fn_args.model_run_dir, "checkpoints")
  # cfg's precision is resolved: a run resumed on another kind of machine
  # (GPU: loss-scaled optimizer) starts its own checkpoints.
  key = hashlib.sha256(json.dumps(
      [cfg.to_dict(), fn_args.transform_output, sorted(fn_args.train_files)],
      sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(root, f"mae-{key}")


def compile_mae(cfg: config_lib.RunConfig, strategy: tf.distribute.Strategy,
                steps_per_epoch: int) -> MaskedAutoencoder:
  """The MAE with its AdamW and warmup-cosine schedule for the global batch
  (batch_size per replica x replicas). Call inside `strategy.scope()` and the
  precision policy."""
  p = cfg.pretrain
  global_batch = p.batch_size * strategy.num_replicas_in_sync
  jit = training.use_xla(strategy, cfg.runtime.jit_compile)
  splits = cfg.runtime.xla_splits if jit else 1
  if splits < 1 or p.batch_size % splits:
    raise ValueError(f"runtime.xla_splits must divide pretrain.batch_size "
                     f"{p.batch_size}; got {cfg.runtime.xla_splits}")
  model = MaskedAutoencoder(cfg.model, xla_splits=splits).build_for()
  schedule = training.WarmupCosine(
      training.scaled_lr(p.base_lr, global_batch),
      total_steps=steps_per_epoch * p.epochs,
      warmup_steps=round(p.warmup_epochs * steps_per_epoch), min_lr=p.min_lr)
  optimizer = training.adamw(schedule, p.weight_decay, p.beta_1, p.beta_2,
                             model.trainable_variables)
  optimizer.build(model.trainable_variables)
  # With splits, the micro-batch programs are the XLA parts of the step.
  model.compile(optimizer=optimizer, jit_compile=jit and splits == 1)
  return model


def pretrain(cfg: config_lib.RunConfig, train_images, log_dir: str,
             checkpoint_dir: str, extra_callbacks=()):
  """Pretrains an MAE on `train_images` [N, S, S, 3]; returns (model, history)."""
  training.require_keras2()
  cfg = training.with_resolved_precision(cfg)
  p, rt = cfg.pretrain, cfg.runtime
  tf.keras.utils.set_random_seed(rt.seed)
  strategy = training.make_strategy(rt.strategy)
  global_batch = p.batch_size * strategy.num_replicas_in_sync
  steps_per_epoch = p.steps_per_epoch or len(train_images) // global_batch
  if steps_per_epoch < 1:
    raise ValueError(f"{len(train_images)} training images do not fill one "
                     f"batch of {global_batch}")
  dataset = data.pretrain_dataset(train_images, global_batch, p.crop_min_scale,
                                  seed=rt.seed)
  with training.precision_policy(rt.precision), strategy.scope():
    model = compile_mae(cfg, strategy, steps_per_epoch)
    checkpoint = training.EpochCheckpoint(checkpoint_dir, model, model.optimizer)
    initial_epoch = checkpoint.restore()
    progress = training.ProgressLogger("mae_pretrain", p.epochs,
                                       steps_per_epoch * global_batch, log_dir)
    n_params = sum(int(tf.size(v)) for v in model.trainable_variables)
    print(f"[mae_pretrain] {n_params / 1e6:.2f}M parameters, "
          f"{len(train_images)} images, {steps_per_epoch} steps/epoch of "
          f"{global_batch}, {p.epochs} epochs, {rt.precision}, "
          f"{strategy.num_replicas_in_sync} replica(s)", flush=True)
    model.fit(dataset, epochs=p.epochs, steps_per_epoch=steps_per_epoch,
              initial_epoch=initial_epoch, verbose=0,
              callbacks=[progress, checkpoint,
                         tf.keras.callbacks.TensorBoard(log_dir, update_freq="epoch"),
                         *extra_callbacks])
  return model, progress.history


def run_fn(fn_args: FnArgs) -> None:
  """TFX Trainer entry point."""
  cfg = training.with_resolved_precision(
      config_lib.from_custom_config(fn_args.custom_config))
  tft_output = tft.TFTransformOutput(fn_args.transform_output)
  train_images, _ = data.load_transformed(fn_args.train_files, tft_output,
                                          cfg.pretrain.max_train_examples)
  # A few test images to show what the MAE reconstructs, every epoch.
  n_show = cfg.pretrain.reconstruction_images
  shown, _ = data.load_transformed(fn_args.eval_files, tft_output, n_show)
  shown_raw = data.load_raw_images(fn_args.eval_files,
                                   tft_output.raw_feature_spec(), n_show)
  model, history = pretrain(
      cfg, train_images, fn_args.model_run_dir, _checkpoint_dir(fn_args, cfg),
      [visualize.ReconstructionLogger(shown, shown_raw, fn_args.model_run_dir)])
  save_mae(model, fn_args.serving_model_dir)
  grid = visualize.reconstruction_grid(model, shown, shown_raw)
  summary = dict(run_config=cfg.to_dict(), history=history,
                 train_examples=int(len(train_images)))
  for directory in (fn_args.serving_model_dir, fn_args.model_run_dir):
    visualize.write_png(grid, os.path.join(directory, RECONSTRUCTIONS_FILE))
    with tf.io.gfile.GFile(os.path.join(directory, SUMMARY_FILE), "w") as f:
      json.dump(summary, f, indent=2, default=float)
  logging.info("MAE saved to %s", fn_args.serving_model_dir)
