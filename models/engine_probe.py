"""Linear probe of a frozen encoder: features, the probe head, LP and k-NN.

  result = linear_probe(cfg, encoder, class_names, train_batches, eval_batches, log_dir)

The encoder is frozen and the probe uses no augmentation, so every image's
embedding is computed once, streaming the images (`extract_features`; the
batches come from `data.transformed_batches`), and the head (BatchNorm
without affine + Dense, `models.linear_probe`) trains on them for many epochs
in seconds (`train_probe`). The same features give the k-NN accuracy
(`models.evaluation.evaluate_knn`) and the exported classifier's k-NN bank.
No TFX types: the Trainer's run_fn (`components/probe_trainer.py`), the
benchmarks and the notebooks call these.
"""

import dataclasses
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from models import config as config_lib
from models import data, names, near_duplicates, optimization, progress, run_log, runtime
from models.names import KNN_K, KNN_KS
from models.evaluation import evaluate_knn, fit_whitening
from models.linear_probe import FEATURE_BN, ProbeClassifier, build_probe_head, drop_empty_features
from models.mae import Encoder

PROBE_STEPS_PER_EXECUTION = 32


def extract_features(
    embed: Callable[[tf.Tensor], tf.Tensor], batches: tf.data.Dataset
) -> Tuple[np.ndarray, np.ndarray]:
  """(features [N, D], labels [N]) of a dataset of (images [B, S, S, 3],
  labels [B]) batches, embedded by the frozen `embed`."""
  fn = tf.function(embed)
  features, labels = [], []
  for images, batch_labels in batches:
    features.append(fn(images).numpy())
    labels.append(batch_labels.numpy())
  if not features:
    raise ValueError("No examples to embed")
  return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def train_probe(
    cfg: config_lib.ProbeConfig,
    num_classes: int,
    train_features,
    train_labels,
    eval_features,
    eval_labels,
    log_dir: str,
    seed: int = 0,
) -> Tuple[tf.keras.Model, List[Dict[str, Any]]]:
  """Trains the probe head on frozen features; returns (head, history)."""
  if cfg.epochs < 1:
    raise ValueError(f"probe.epochs must be at least 1, got {cfg.epochs}")
  for split, labels in (("train", train_labels), ("eval", eval_labels)):
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
      raise ValueError(
          f"{split} labels span [{labels.min()}, {labels.max()}], "
          f"outside the {num_classes} classes [0, {num_classes - 1}]"
      )
  tf.keras.utils.set_random_seed(seed)
  variance = train_features.var(0)
  # Features below the floor are zeroed for training as the served head
  # ignores them (`drop_empty_features`), so the head trained is the head
  # served; the BatchNorm would otherwise scale them up a thousandfold.
  dropped = variance < cfg.variance_floor * variance.max()
  if dropped.any():
    train_features = np.where(dropped, 0.0, train_features).astype(train_features.dtype)
    eval_features = np.where(dropped, 0.0, eval_features).astype(eval_features.dtype)
    variance = np.where(dropped, 0.0, variance)
  head = build_probe_head(train_features.shape[1], num_classes)
  # The BatchNorm's moving statistics (what inference uses) start at the
  # features' exact mean and variance instead of 0 and 1: their moving
  # average forgets its start only after a few hundred steps, and a small
  # data set trains fewer, so with features far from zero mean the start
  # would decide the predictions.
  head.get_layer(FEATURE_BN).set_weights([train_features.mean(0), variance])
  steps_per_epoch = int(np.ceil(len(train_features) / cfg.batch_size))
  schedule = optimization.WarmupCosine(
      optimization.scaled_lr(cfg.base_lr, cfg.batch_size),
      total_steps=steps_per_epoch * cfg.epochs,
      warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
  )
  head.compile(
      optimizer=optimization.adamw(
          schedule, cfg.weight_decay, 0.9, 0.999, head.trainable_variables
      ),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
      # The head is tiny: run many steps per call so Python does not dominate.
      steps_per_execution=PROBE_STEPS_PER_EXECUTION,
  )
  logger = progress.ProgressLogger(names.PROBE_TRAINER, cfg.epochs, len(train_features), log_dir)
  head.fit(
      train_features,
      train_labels,
      batch_size=cfg.batch_size,
      epochs=cfg.epochs,
      shuffle=True,
      verbose=0,
      validation_data=(eval_features, eval_labels),
      callbacks=[logger, tf.keras.callbacks.TensorBoard(log_dir, update_freq="epoch")],
  )
  drop_empty_features(head, dropped)
  if dropped.any():
    run_log.log.info(
        "[%s] %d of %d features below the variance floor (%g x the largest): not read",
        names.PROBE_TRAINER,
        int(dropped.sum()),
        len(dropped),
        cfg.variance_floor,
    )
  return head, logger.history


@dataclasses.dataclass
class ProbeResult:
  """What `linear_probe` returns: the classifier to export, and its numbers."""

  classifier: ProbeClassifier  # frozen encoder + trained head (to export)
  summary: Dict[str, Any]  # history, eval_accuracy, knn_accuracy, knn {k: acc}, ...
  train_embeddings: np.ndarray  # [N, E] the served embedding of each train image, in order


def linear_probe(
    cfg: config_lib.RunConfig,
    encoder: Encoder,
    class_names: List[str],
    train_batches: tf.data.Dataset,
    eval_batches: tf.data.Dataset,
    log_dir: str,
) -> ProbeResult:
  """Probes the frozen `encoder`: linear (BN + Dense) and k-NN accuracy on
  the eval batches, both on the embedding the served model returns (the
  pooled tokens, whitened by the train features' statistics when
  `cfg.probe.whitening`). Batches
  are (images, labels), e.g. `data.transformed_batches`; label i is
  `class_names[i]`."""
  runtime.require_keras2()
  encoder.trainable = False
  classifier = ProbeClassifier(
      encoder, head=None, class_names=class_names, feature_blocks=cfg.probe.feature_blocks
  )
  start = time.perf_counter()
  train_features, train_labels = extract_features(classifier.pooled_tokens, train_batches)
  eval_features, eval_labels = extract_features(classifier.pooled_tokens, eval_batches)
  run_log.log.info(
      "[%s] %d-d features of %d train and %d eval images in %s",
      names.PROBE_TRAINER,
      train_features.shape[1],
      len(train_labels),
      len(eval_labels),
      run_log.duration(time.perf_counter() - start),
  )
  bank = slice(0, cfg.probe.knn_bank_examples)
  num_classes = len(class_names)

  def knn_accuracies(bank_features, evaluation, bank_normalised=False):
    return {
        k: evaluate_knn(
            bank_features,
            train_labels[bank],
            evaluation,
            eval_labels,
            k=k,
            num_classes=num_classes,
            bank_normalised=bank_normalised,
        )
        for k in KNN_KS
    }

  extra = {}
  if cfg.probe.whitening:
    # The pooled tokens' k-NN too: what whitening adds, measured on the same run.
    extra["knn_unwhitened"] = {
        str(k): acc for k, acc in knn_accuracies(train_features[bank], eval_features).items()
    }
    classifier.set_whitening(
        *fit_whitening(train_features, cfg.probe.whitening_shrinkage, cfg.probe.variance_floor)
    )
    train_features = classifier.whiten(train_features).numpy()
    eval_features = classifier.whiten(eval_features).numpy()
  head, history = train_probe(
      cfg.probe,
      num_classes,
      train_features,
      train_labels,
      eval_features,
      eval_labels,
      log_dir,
      cfg.runtime.seed,
  )
  classifier.head = head
  linear = history[-1]["val_accuracy"]
  classifier.set_knn_bank(train_features[bank], train_labels[bank], KNN_K)
  # Scored against the stored bank, so the exported model's k-NN agrees.
  knn = knn_accuracies(classifier.knn_bank.numpy(), eval_features, bank_normalised=True)
  run_log.log.info(
      "[%s] test top-1: linear %.4f, %s%s",
      names.PROBE_TRAINER,
      linear,
      ", ".join(f"{k}-NN (cosine) {acc:.4f}" for k, acc in knn.items()),
      (
          ", unwhitened "
          + ", ".join(f"{k}-NN {acc:.4f}" for k, acc in extra["knn_unwhitened"].items())
      )
      if extra
      else "",
  )
  return ProbeResult(
      classifier,
      dict(
          history=history,
          feature_dim=int(train_features.shape[1]),
          classes=len(class_names),
          train_examples=int(len(train_labels)),
          eval_examples=int(len(eval_labels)),
          eval_accuracy=linear,
          knn_k=KNN_K,
          knn_accuracy=knn[KNN_K],
          knn={str(k): acc for k, acc in knn.items()},
          knn_bank_examples=int(min(len(train_labels), cfg.probe.knn_bank_examples)),
          whitening=cfg.probe.whitening,
          **extra,
      ),
      train_features,
  )


def fit_duplicate_projection(
    cfg: config_lib.RunConfig,
    classifier: ProbeClassifier,
    tf_transform_output,
    train_files: List[str],
    train_embeddings: np.ndarray,
) -> Dict[str, Any]:
  """Fits near-duplicate search's projection and threshold
  (`models.near_duplicates`) on the train split and sets them on the probed
  `classifier`; returns what was fit, for the run's summary.

  The first `search.duplicate_fit_images` train images are fit: the
  examples' files decoded to the model's size (`data.load_raw_images`) and
  copies made of them, both embedded through the Transform graph as a
  served image is. The threshold is calibrated on every other train image,
  through `train_embeddings` (the served embeddings of the split in file
  order, `linear_probe`'s): many corpora drawn from tens of thousands of
  images pin it down where one held-out corpus leaves it about 0.01 loose.
  A split too small for both holds out a third."""
  search = cfg.search
  start = time.perf_counter()
  count = len(train_embeddings)
  held_out = max(count - search.duplicate_fit_images, count // 3)
  if held_out < 2 or count - held_out < 4:
    raise ValueError(f"fitting the duplicate projection takes at least 6 train images, got {count}")
  pixels = data.load_raw_images(
      train_files, tf_transform_output.raw_feature_spec(), count - held_out, cfg.data.image_size
  )
  fit = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
  prepare = tf_transform_output.transform_features_layer()

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def embed_batch(image_bytes):
    raw = {names.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])}
    return classifier.embed(prepare(raw)[names.IMAGE_KEY])

  def embed_files(files: List[bytes]) -> np.ndarray:
    return np.concatenate(
        [embed_batch(tf.constant(files[i : i + 256])).numpy() for i in range(0, len(files), 256)]
    )

  originals = embed_files([near_duplicates.encode(image) for image in fit])
  copies = np.stack(
      [embed_files(files) for files in near_duplicates.altered_copies(fit, cfg.runtime.seed)]
  )
  projection = near_duplicates.fit_projection(
      originals, copies, search.duplicate_dims, search.duplicate_shrinkage
  )
  threshold = near_duplicates.calibrate_threshold(
      near_duplicates.project(train_embeddings[len(fit) :], projection),
      search.duplicate_max_fp,
      draws=search.duplicate_calibration_draws,
      seed=cfg.runtime.seed,
  )
  classifier.set_duplicate_projection(projection, threshold)
  summary = dict(
      dims=int(projection.shape[1]),
      fit_images=len(fit),
      copies_per_image=len(copies),
      calibration_images=held_out,
      threshold=threshold,
      seconds=round(time.perf_counter() - start, 1),
  )
  run_log.log.info(
      "[%s] duplicate projection: %d dims fit on %d train images x %d copies, "
      "threshold %.3f (at most %g of a corpus of %d flagged: the median of %d corpora "
      "drawn from %d held-out images) in %s",
      names.PROBE_TRAINER,
      summary["dims"],
      len(fit),
      len(copies),
      threshold,
      search.duplicate_max_fp,
      near_duplicates.CALIBRATION_CORPUS,
      search.duplicate_calibration_draws,
      held_out,
      run_log.duration(summary["seconds"]),
  )
  return summary
