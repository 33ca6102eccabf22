"""Trainer "linear_probe": frozen MAE encoder + BatchNorm(no affine) + Dense.

The encoder is frozen and the probe uses no augmentation, so the features of
every image are computed once (mean of the encoder tokens of all patches, no
masking) and the head trains on them for many epochs in seconds. The export
joins encoder and head into one float32 SavedModel with the serving
signatures of `models.signatures`.
"""

import json
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from models import config as config_lib
from models import data, evaluation, signatures, training
from models.linear_probe import ProbeClassifier, build_probe_head
from models.mae_trainer import SUMMARY_FILE, load_mae

FEATURE_BATCH = 512
PROBE_STEPS_PER_EXECUTION = 32
KNN_K = 20


def extract_features(encoder_embed, images: np.ndarray) -> np.ndarray:
  """[N, S, S, 3] -> [N, D] with the frozen encoder, in batches."""
  fn = tf.function(encoder_embed)
  return np.concatenate([fn(batch).numpy()
                         for batch in data.batched(images, FEATURE_BATCH)])


def train_probe(cfg: config_lib.ProbeConfig, train_features, train_labels,
                eval_features, eval_labels, log_dir: str, seed: int = 0):
  """Trains the probe head on frozen features; returns (head, history)."""
  if cfg.epochs < 1:
    raise ValueError(f"probe.epochs must be at least 1, got {cfg.epochs}")
  tf.keras.utils.set_random_seed(seed)
  head = build_probe_head(train_features.shape[1])
  steps_per_epoch = int(np.ceil(len(train_features) / cfg.batch_size))
  schedule = training.WarmupCosine(
      training.scaled_lr(cfg.base_lr, cfg.batch_size),
      total_steps=steps_per_epoch * cfg.epochs,
      warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))
  head.compile(
      optimizer=training.adamw(schedule, cfg.weight_decay, 0.9, 0.999,
                               head.trainable_variables),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
      # The head is tiny: run many steps per call so Python does not dominate.
      steps_per_execution=PROBE_STEPS_PER_EXECUTION)
  progress = training.ProgressLogger("linear_probe", cfg.epochs,
                                     len(train_features), log_dir)
  head.fit(train_features, train_labels, batch_size=cfg.batch_size,
           epochs=cfg.epochs, shuffle=True, verbose=0,
           validation_data=(eval_features, eval_labels),
           callbacks=[progress,
                      tf.keras.callbacks.TensorBoard(log_dir, update_freq="epoch")])
  return head, progress.history


def run_fn(fn_args: FnArgs) -> None:
  """TFX Trainer entry point; `fn_args.base_model` is the pretrained MAE."""
  training.require_keras2()
  if not fn_args.base_model:
    raise ValueError("linear_probe needs the MAE model as base_model")
  cfg = config_lib.from_custom_config(fn_args.custom_config)
  tft_output = tft.TFTransformOutput(fn_args.transform_output)
  encoder = load_mae(fn_args.base_model).encoder     # float32 for export
  encoder.trainable = False

  classifier = ProbeClassifier(encoder, head=None,
                               feature_blocks=cfg.probe.feature_blocks)
  train_images, train_labels = data.load_transformed(fn_args.train_files, tft_output)
  eval_images, eval_labels = data.load_transformed(fn_args.eval_files, tft_output)
  train_features = extract_features(classifier.embed, train_images)
  eval_features = extract_features(classifier.embed, eval_images)
  del train_images, eval_images

  head, history = train_probe(cfg.probe, train_features, train_labels,
                              eval_features, eval_labels,
                              fn_args.model_run_dir, cfg.runtime.seed)
  classifier.head = head
  signatures.export_saved_model(classifier, tft_output, fn_args.serving_model_dir)

  linear = history[-1]["val_accuracy"]
  knn = evaluation.knn_accuracy(train_features, train_labels, eval_features,
                                eval_labels, k=KNN_K)
  print(f"[linear_probe] test top-1: linear {linear:.4f}, "
        f"{KNN_K}-NN (cosine) {knn:.4f}", flush=True)
  summary = dict(history=history, feature_dim=int(train_features.shape[1]),
                 train_examples=int(len(train_labels)),
                 eval_examples=int(len(eval_labels)),
                 eval_accuracy=linear, knn_k=KNN_K, knn_accuracy=knn)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2, default=float)
  logging.info("Probe exported to %s (test accuracy %.4f)",
               fn_args.serving_model_dir, linear)
