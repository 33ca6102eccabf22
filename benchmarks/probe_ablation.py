"""Linear-probe ablations on one frozen encoder: features and probe optimiser.

  python -m benchmarks.probe_ablation --mae /tmp/q/mae/model
  python -m benchmarks.probe_ablation --random-init          # same, random encoder

The encoder is frozen, so one pretraining run serves every probe variant:
features are extracted once per feature option (the encoder's embedding, i.e.
its [CLS] token or the mean of the patch tokens, of the last k blocks side
by side) with `engine_probe.extract_features`, then used raw and PCA-whitened
(`evaluation.fit_whitening` at each --whitening shrinkage; "off": raw), and
each probe setting is trained with `engine_probe.train_probe` (BatchNorm
without affine + Dense), the functions the probe Trainer runs. Each feature
set is also scored by k-NN (k=20 and 200, cosine) and, with --logreg, by a
multinomial logistic regression (L-BFGS) on standardised features for
calibration. Data: the Examples and Transform graph of the newest `make
pipeline` run (as probe_quality).
"""

import argparse
import dataclasses
import json
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
from models import data, names, schema
from models.engine_pretrain import load_mae
from models.engine_probe import extract_features, train_probe
from models.names import KNN_KS
from models.evaluation import evaluate_knn, fit_whitening
from models.linear_probe import ProbeClassifier
from models.joint_embedding import build_mae
from pipeline.runs import pipeline_inputs, schema_file


def logistic_regression_accuracy(train_x, train_y, test_x, test_y) -> float:
  """The calibration probe: L2 logistic regression on standardised features."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  scaler = StandardScaler().fit(train_x)
  clf = LogisticRegression(max_iter=1000).fit(scaler.transform(train_x), train_y)
  return float(clf.score(scaler.transform(test_x), test_y))


def main(argv=None):
  """Prints, per feature set (last k blocks, raw or whitened) of one frozen
  encoder, the test top-1 of each `--probes` probe (and with `--logreg`, of
  a logistic regression) beside k-NN's, and each probe's training time."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--mae", help="an MAE saved by the mae_pretrain Trainer")
  source.add_argument("--random-init", action="store_true")
  p.add_argument(
      "--profile",
      default="cpu",
      help="model shape for --random-init and the baseline probe settings",
  )
  p.add_argument(
      "--feature-blocks", default="1,2,4", help="comma-separated k: the last k blocks side by side"
  )
  p.add_argument(
      "--whitening",
      default="off,1e-4",
      help="comma-separated: off (raw features) or a whitening shrinkage",
  )
  p.add_argument(
      "--logreg",
      action="store_true",
      help="also the L-BFGS logistic regression (minutes per feature set)",
  )
  p.add_argument(
      "--probes", default="[{}]", help="JSON list of ProbeConfig overrides, one probe each"
  )
  p.add_argument(
      "--metadata", default=names.metadata_path(), help="MLMD database of the run whose data to use"
  )
  args = p.parse_args(argv)

  cfg = config_lib.get_profile(args.profile)
  if args.mae:
    encoder = load_mae(args.mae).encoder
  else:
    tf.keras.utils.set_random_seed(cfg.runtime.seed)
    encoder = build_mae(cfg.model).encoder
  examples, transform = pipeline_inputs(args.metadata)
  tft_output = tft.TFTransformOutput(transform)
  class_names = schema.class_names(schema.read_schema(schema_file(args.metadata)))

  rows = []
  for k in [int(v) for v in args.feature_blocks.split(",")]:
    classifier = ProbeClassifier(encoder, head=None, class_names=class_names, feature_blocks=k)
    t0 = time.time()
    raw_train, train_labels = extract_features(
        classifier.pooled_tokens,
        data.transformed_batches(names.split_files(examples, "train"), tft_output),
    )
    raw_test, test_labels = extract_features(
        classifier.pooled_tokens,
        data.transformed_batches(names.split_files(examples, "test"), tft_output),
    )
    print(f"features (last {k} block(s)): {time.time() - t0:.0f} s", flush=True)
    for whitening in args.whitening.split(","):
      if whitening == "off":
        train_x, test_x = raw_train, raw_test
      else:
        mean, matrix = fit_whitening(raw_train, float(whitening))
        train_x, test_x = (raw_train - mean) @ matrix, (raw_test - mean) @ matrix
      features = f"{k} block(s), whitening {whitening}"
      knn = {kk: evaluate_knn(train_x, train_labels, test_x, test_labels, k=kk) for kk in KNN_KS}
      if args.logreg:
        t0 = time.time()
        logreg = logistic_regression_accuracy(train_x, train_labels, test_x, test_labels)
        rows.append(
            (features, "logistic regression (L-BFGS, standardised)", logreg, knn, time.time() - t0)
        )
        print(rows[-1], flush=True)
      for overrides in json.loads(args.probes):
        probe_cfg = dataclasses.replace(cfg.probe, **overrides)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
          _, history = train_probe(
              probe_cfg,
              len(class_names),
              train_x,
              train_labels,
              test_x,
              test_labels,
              tmp,
              cfg.runtime.seed,
          )
        rows.append(
            (
                features,
                f"BN + linear {json.dumps(overrides)}",
                history[-1]["val_accuracy"],
                knn,
                time.time() - t0,
            )
        )
        print(rows[-1], flush=True)

  print(f"\nsummary (test top-1 on {len(test_labels):,} images):")
  print(
      f"{'features':28s}  {'probe':44s} {'LP':>7} "
      + " ".join(f"{f'kNN k={kk}':>9}" for kk in KNN_KS)
      + f" {'probe s':>8}"
  )
  for features, name, acc, knn, secs in rows:
    print(
        f"{features:28s}  {name:44s} {acc:7.4f} "
        + " ".join(f"{knn[kk]:9.4f}" for kk in KNN_KS)
        + f" {secs:8.0f}"
    )


if __name__ == "__main__":
  main()
