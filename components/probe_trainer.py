"""Trainer "linear_probe": the run_fn, a TFX adapter over `models.engine_probe`.

`base_model` is the MAE the mae_pretrain Trainer saved. Its frozen encoder
and the trained probe head are exported as one float32 SavedModel with the
serving signatures of `models.signatures` (what the Evaluator scores and the
Pusher pushes), and the MAE itself is copied beside it
(`names.carried_mae_dir`: what a later span warm-starts from once this
model is blessed); the ModelRun dir gets TensorBoard logs and
`train_summary.json` (linear and k-NN test accuracy, the near-duplicate
projection's fit). The exported model carries near-duplicate search's
projection and threshold (`engine_probe.fit_duplicate_projection`). The classes (number
and names, id order) come from the schema's `class_name` domain.
"""

import os

import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from models import config as config_lib
from models import data, engine_pretrain, engine_probe, files, names, schema, signatures


def run_fn(fn_args: FnArgs) -> None:
  """TFX Trainer entry point."""
  if not fn_args.base_model:
    raise ValueError("linear_probe needs the MAE model as base_model")
  cfg = config_lib.from_custom_config(fn_args.custom_config)
  tft_output = tft.TFTransformOutput(fn_args.transform_output)
  encoder = engine_pretrain.load_mae(fn_args.base_model).encoder  # float32 for export
  class_names = schema.class_names(schema.read_schema(fn_args.schema_path))
  result = engine_probe.linear_probe(
      cfg,
      encoder,
      class_names,
      data.transformed_batches(fn_args.train_files, tft_output),
      data.transformed_batches(fn_args.eval_files, tft_output),
      fn_args.model_run_dir,
  )
  if cfg.search.duplicate_dims:
    result.summary["duplicates"] = engine_probe.fit_duplicate_projection(
        cfg, result.classifier, tft_output, fn_args.train_files, result.train_embeddings
    )

  signatures.export_saved_model(result.classifier, tft_output, fn_args.serving_model_dir)
  files.copy_tree(fn_args.base_model, names.carried_mae_dir(fn_args.serving_model_dir))
  files.write_json(result.summary, os.path.join(fn_args.model_run_dir, names.SUMMARY_FILE))
