"""Trainer "mae_pretrain": the run_fn, a TFX adapter over `models.engine_pretrain`.

Reads the Transform'ed images of its train splits (train, and unlabeled when
the data has it; held in memory when they fit `data.memory_budget_mb`,
streamed otherwise), pretrains the MAE (resuming
from the epoch checkpoints of an interrupted run with the same config and
data; on a new span, for `pretrain.warm_start_epochs` from the MAE of the
blessed model the pipeline resolved as `base_model`, when
`engine_pretrain.warm_start_source` accepts it), and writes
into the Model artifact's serving dir the saved MAE (`config.json` +
`weights/` + `training.json`, read by the linear_probe Trainer's `load_mae`)
and the reconstruction grid; the ModelRun dir gets TensorBoard logs (a
reconstruction grid every epoch), the grid and `train_summary.json`, which
names the warm start (or why there was none).
"""

import os

import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from models import config as config_lib
from models import data, engine_pretrain, examples, files, names, precision, runtime, visualize


def run_fn(fn_args: FnArgs) -> None:
  """TFX Trainer entry point."""
  cfg = precision.with_resolved_precision(config_lib.from_custom_config(fn_args.custom_config))
  tft_output = tft.TFTransformOutput(fn_args.transform_output)
  train_images = data.training_images(
      fn_args.train_files,
      tft_output,
      cfg.data.memory_budget_mb,
      cfg.data.shuffle_buffer,
      cfg.pretrain.max_train_examples,
  )
  # A few test images to show what the MAE reconstructs.
  n_show = cfg.pretrain.reconstruction_images
  shown, _ = data.load_transformed(fn_args.eval_files, tft_output, n_show)
  shown_raw = data.load_raw_images(
      fn_args.eval_files, tft_output.raw_feature_spec(), n_show, cfg.data.image_size
  )
  checkpoint_root = (fn_args.custom_config or {}).get(
      config_lib.CHECKPOINT_ROOT_KEY
  ) or os.path.join(fn_args.model_run_dir, "checkpoints")
  data_digest = examples.files_digest(fn_args.train_files)
  cfg, warm_from, warm_start = engine_pretrain.warm_start(cfg, fn_args.base_model, data_digest)
  model, history = engine_pretrain.pretrain(
      cfg,
      train_images,
      fn_args.model_run_dir,
      engine_pretrain.checkpoint_dir(
          checkpoint_root,
          cfg,
          [
              fn_args.transform_output,
              *sorted(fn_args.train_files),
              *([warm_from] if warm_from else []),
          ],
      ),
      [visualize.ReconstructionLogger(shown, shown_raw, fn_args.model_run_dir)],
      initial_mae=warm_from,
  )

  if not runtime.is_chief(model.distribute_strategy):
    return  # a multi-worker run's other workers: the chief writes the outputs
  engine_pretrain.save_mae(
      model.mae,
      fn_args.serving_model_dir,
      training=dict(data_digest=data_digest, warm_start=warm_start),
  )
  grid = visualize.reconstruction_grid(model.mae, shown, shown_raw)
  for directory in (fn_args.serving_model_dir, fn_args.model_run_dir):
    visualize.write_png(grid, os.path.join(directory, names.RECONSTRUCTIONS_FILE))
  files.write_json(
      dict(
          run_config=cfg.trainer_config(),
          history=history,
          train_examples=train_images.count,
          streamed=train_images.streamed,
          warm_start=warm_start,
      ),
      os.path.join(fn_args.model_run_dir, names.SUMMARY_FILE),
  )
