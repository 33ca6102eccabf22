"""Representation quality: pretrain N epochs, then linear probe and k-NN.

  python -m benchmarks.probe_quality --epochs 10            # MAE, 10 epochs
  python -m benchmarks.probe_quality --epochs 0             # random-init encoder
  python -m benchmarks.probe_quality --mae /tmp/q/mae/model # re-probe a saved MAE
  python -m benchmarks.probe_quality --mae /tmp/q/mae/model --export /tmp/q/served/1
                                                           # ... and export it to serve
  python -m benchmarks.probe_quality --epochs 10 \
      --overrides '{"model": {"mask_ratio": 0.6}}'           # an ablation

Runs the library the pipeline's Trainers run (`engine_pretrain.pretrain`,
then `engine_probe.linear_probe` on the frozen encoder) on the Examples and
Transform graph of the newest `make pipeline` run in the given output
folder. Prints LP top-1 and k-NN (k=20 and 200, cosine) top-1 on the test
split (on the served, whitened embedding, and the k-NN also on the pooled
tokens before whitening), the MAE images/second and the wall time of each
stage.
"""

import argparse
import json
import os
import tempfile
import time

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import tensorflow as tf
import tensorflow_transform as tft

from models import config as config_lib
from models import data, engine_pretrain, engine_probe, names, precision, schema
from models.joint_embedding import build_mae
from pipeline.runs import pipeline_inputs, schema_file


def main(argv=None):
  """Pretrains (or loads, or random-inits) an MAE, probes its frozen
  encoder and prints the test LP and k-NN top-1, the MAE img/s and each
  stage's wall time."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--epochs", type=int, help="0: random-init encoder")
  source.add_argument(
      "--mae",
      help="probe this saved MAE (<work-dir>/mae/model of an "
      "earlier run) instead of pretraining one",
  )
  p.add_argument("--profile", default="cpu")
  p.add_argument("--overrides", default="{}")
  p.add_argument(
      "--metadata", default=names.metadata_path(), help="MLMD database of the run whose data to use"
  )
  p.add_argument(
      "--work-dir", default=None, help="keep the MAE, logs and checkpoints here (default: temp)"
  )
  p.add_argument(
      "--export",
      default=None,
      help="also write the probed classifier as the pipeline's SavedModel (its "
      "signatures) here, e.g. <dir>/1 for benchmarks that take a --model-dir",
  )
  args = p.parse_args(argv)

  overrides = json.loads(args.overrides)
  if args.epochs is not None:
    overrides.setdefault("pretrain", {})["epochs"] = args.epochs
  cfg = precision.with_resolved_precision(config_lib.get_profile(args.profile, overrides))
  examples, transform = pipeline_inputs(args.metadata)
  tft_output = tft.TFTransformOutput(transform)
  work = args.work_dir or tempfile.mkdtemp(prefix="probe_quality-")
  train_files = names.split_files(examples, "train")
  test_files = names.split_files(examples, "test")

  t0 = time.time()
  history = []
  if args.mae:
    mae = engine_pretrain.load_mae(args.mae)
  elif args.epochs:
    train_images = data.training_images(
        train_files, tft_output, cfg.data.memory_budget_mb, cfg.data.shuffle_buffer
    )
    model, history = engine_pretrain.pretrain(
        cfg,
        train_images,
        os.path.join(work, "mae"),
        engine_pretrain.checkpoint_dir(os.path.join(work, "ckpt"), cfg, [transform, *train_files]),
    )
    del train_images
    mae = model.mae
    engine_pretrain.save_mae(mae, os.path.join(work, "mae", "model"))
  else:
    tf.keras.utils.set_random_seed(cfg.runtime.seed)
    mae = build_mae(cfg.model)
  t1 = time.time()
  class_names = schema.class_names(schema.read_schema(schema_file(args.metadata)))
  result = engine_probe.linear_probe(
      cfg,
      mae.encoder,
      class_names,
      data.transformed_batches(train_files, tft_output),
      data.transformed_batches(test_files, tft_output),
      os.path.join(work, "probe"),
  )
  t2 = time.time()
  if args.export:
    from models.signatures import export_saved_model

    if cfg.search.duplicate_dims:  # as the probe Trainer does
      engine_probe.fit_duplicate_projection(
          cfg, result.classifier, tft_output, train_files, result.train_embeddings
      )
    export_saved_model(result.classifier, tft_output, args.export)

  # The first epoch includes tracing and XLA compilation.
  ips = [h["images_per_second"] for h in history[1:] or history]
  summary = result.summary
  print(
      json.dumps(
          {"overrides": overrides, "profile": args.profile, "precision": cfg.runtime.precision}
      )
  )
  print(
      f"{f'epochs {args.epochs}' if args.mae is None else args.mae}: "
      f"LP top-1 {summary['eval_accuracy']:.4f}, "
      + "".join(f"kNN(k={k}) top-1 {acc:.4f}, " for k, acc in summary["knn"].items())
      + "".join(
          f"unwhitened kNN(k={k}) {acc:.4f}, "
          for k, acc in summary.get("knn_unwhitened", {}).items()
      )
      + (f"MAE {sum(ips) / len(ips):.0f} img/s, " if ips else "")
      + f"pretrain {t1 - t0:.0f} s, probe {t2 - t1:.0f} s, models in {work}"
  )


if __name__ == "__main__":
  main()
