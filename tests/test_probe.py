"""The probe engine on real CIFAR-10 examples: it streams the Transform'ed
examples, and what it reports is what the classifier it returns does."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from models import config as config_lib
from models import data
from models.engine_probe import extract_features, linear_probe, train_probe
from models.evaluation import evaluate_knn, fit_whitening, with_relative_noise
from models.joint_embedding import build_mae
from models.names import KNN_K, KNN_KS
from tests.conftest import cifar10_class_names


@pytest.fixture(scope="module")
def encoder():
  tf.keras.utils.set_random_seed(0)
  return build_mae(config_lib.get_profile("smoke").model).encoder


def test_streamed_features_equal_the_in_memory_ones(
    example_files, transform_output, encoder, cifar10_sample
):
  train_files, _ = example_files
  features, labels = extract_features(
      encoder.embed, data.transformed_batches(train_files, transform_output, batch_size=96)
  )
  images, loaded_labels = data.load_transformed(train_files, transform_output)
  (_, train_labels), _ = cifar10_sample
  assert features.shape == (320, encoder.cfg.embed_dim) and labels.dtype == np.int64
  np.testing.assert_array_equal(labels, train_labels)
  np.testing.assert_array_equal(loaded_labels, train_labels)
  np.testing.assert_allclose(features, encoder.embed(images).numpy(), rtol=1e-4, atol=1e-5)


def test_reported_accuracies_are_the_returned_classifiers(
    example_files, transform_output, encoder, cifar10_sample, tmp_path
):
  train_files, test_files = example_files
  cfg = config_lib.get_profile("smoke")
  result = linear_probe(
      cfg,
      encoder,
      cifar10_class_names(),
      data.transformed_batches(train_files, transform_output),
      data.transformed_batches(test_files, transform_output),
      str(tmp_path),
  )
  s = result.summary
  assert (s["train_examples"], s["eval_examples"], s["knn_k"], s["classes"]) == (
      320,
      100,
      KNN_K,
      10,
  )
  assert len(s["history"]) == cfg.probe.epochs
  _, (test_images, test_labels) = cifar10_sample
  images, _ = data.load_transformed(test_files, transform_output)
  predicted = result.classifier.probabilities(tf.constant(images)).numpy().argmax(1)
  assert s["eval_accuracy"] == pytest.approx(float((predicted == test_labels).mean()), abs=1e-6)
  # The k-NN is the exported classifier's: its bank is the train images'
  # served (whitened) embeddings, and its votes give the reported accuracy.
  classifier = result.classifier
  train_x, train_y = extract_features(
      classifier.embed, data.transformed_batches(train_files, transform_output)
  )
  test_x, test_y = extract_features(
      classifier.embed, data.transformed_batches(test_files, transform_output)
  )
  assert s["whitening"] and train_x.shape[1] == cfg.embedding_dim
  np.testing.assert_allclose(
      classifier.knn_bank.numpy(),
      train_x / np.linalg.norm(train_x, axis=1, keepdims=True),
      atol=2e-3,
  )  # float16
  votes = classifier.knn_probabilities(tf.constant(images)).numpy()
  assert s["knn_accuracy"] == pytest.approx(float((votes.argmax(1) == test_labels).mean()))
  bank = classifier.knn_bank.numpy()
  assert s["knn"] == {str(k): evaluate_knn(bank, train_y, test_x, test_y, k=k) for k in KNN_KS}
  # ... and the same k-NN on the pooled tokens before whitening.
  pooled_train, _ = extract_features(
      classifier.pooled_tokens, data.transformed_batches(train_files, transform_output)
  )
  pooled_test, _ = extract_features(
      classifier.pooled_tokens, data.transformed_batches(test_files, transform_output)
  )
  # The served embedding: the pooled tokens whitened by the train split's statistics.
  mean, matrix = fit_whitening(pooled_train, cfg.probe.whitening_shrinkage)
  np.testing.assert_allclose(train_x, (pooled_train - mean) @ matrix, rtol=1e-3, atol=1e-3)
  assert s["knn_unwhitened"] == pytest.approx(
      {str(k): evaluate_knn(pooled_train, train_y, pooled_test, test_y, k=k) for k in KNN_KS}
  )


def test_labels_outside_the_classes_are_refused(example_files, transform_output, encoder, tmp_path):
  train_files, test_files = example_files
  with pytest.raises(
      ValueError, match=r"train labels span \[0, 9\], outside the 3 classes \[0, 2\]"
  ):
    linear_probe(
        config_lib.get_profile("smoke"),
        encoder,
        ["a", "b", "c"],
        data.transformed_batches(train_files, transform_output),
        data.transformed_batches(test_files, transform_output),
        str(tmp_path),
    )


def test_a_short_probe_predicts_at_inference_as_it_trained(tmp_path):
  """Features far from zero mean and few steps: inference's BatchNorm
  statistics must be the features', not what is left of their 0/1 start."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 40)
  features = (np.eye(3)[labels] + 50.0 + 0.05 * rng.normal(size=(120, 3))).astype(np.float32)
  cfg = dataclasses.replace(config_lib.get_profile("smoke").probe, epochs=3, batch_size=32)
  head, history = train_probe(cfg, 3, features, labels, features, labels, str(tmp_path))
  predicted = head(features, training=False).numpy().argmax(1)
  assert history[-1]["val_accuracy"] == pytest.approx(float((predicted == labels).mean()))
  assert (predicted == labels).mean() > 0.9


def test_more_classes_than_cifar10(example_files, transform_output, encoder, tmp_path):
  """A data set of 12 classes (two without test images): the head, the k-NN
  votes and the exported probabilities have 12 columns."""
  train_files, test_files = example_files
  result = linear_probe(
      config_lib.get_profile("smoke"),
      encoder,
      [f"class{i}" for i in range(12)],
      data.transformed_batches(train_files, transform_output),
      data.transformed_batches(test_files, transform_output),
      str(tmp_path),
  )
  assert result.summary["classes"] == 12
  images, _ = data.load_transformed(test_files, transform_output, 4)
  assert result.classifier.probabilities(tf.constant(images)).shape == (4, 12)


def _standardised(images):
  x = images.astype(np.float32) / 255.0
  return (x - x.mean((0, 1, 2))) / x.std((0, 1, 2))


@pytest.fixture(scope="module")
def probe_accuracies_under_perturbation(cifar10_dir):
  """{variance_floor: {how: test top-1}} of the probe on a random-init smoke
  encoder (5,000 train, 2,000 test real images): float32, the bfloat16
  encoder twin, 1e-3 relative noise on the pooled tokens (before
  whitening) and on the served embedding (after)."""
  import os
  import tempfile

  from models.cifar10 import read_batch_file

  train = read_batch_file(os.path.join(cifar10_dir, "data_batch_1"))
  test = read_batch_file(os.path.join(cifar10_dir, "test_batch"))
  x_train, y_train = _standardised(train[0][:5000]), train[1][:5000].astype(np.int64)
  x_test, y_test = _standardised(test[0][:2000]), test[1][:2000].astype(np.int64)

  def batches(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(256)

  out = {}
  for floor in (0.0, config_lib.ProbeConfig().variance_floor):
    cfg = config_lib.get_profile(
        "smoke", {"probe": {"variance_floor": floor, "epochs": 20, "batch_size": 64}}
    )
    tf.keras.utils.set_random_seed(0)
    result = linear_probe(
        cfg,
        build_mae(cfg.model).encoder,
        cifar10_class_names(),
        batches(x_train, y_train),
        batches(x_test, y_test),
        tempfile.mkdtemp(),
    )
    classifier = result.classifier
    classifier.add_bfloat16_encoder()
    pooled = classifier.pooled_tokens(x_test).numpy()
    embedding = classifier.whiten(pooled).numpy()
    rng = np.random.default_rng(0)
    logits = {
        "float32": classifier.head(embedding),
        "bfloat16": classifier.head(classifier.embed(x_test, "bfloat16")),
        "noisy pooled tokens": classifier.head(
            classifier.whiten(with_relative_noise(pooled, 1e-3, rng))
        ),
        "noisy embedding": classifier.head(with_relative_noise(embedding, 1e-3, rng)),
    }
    out[floor] = {k: float((v.numpy().argmax(1) == y_test).mean()) for k, v in logits.items()}
    out[floor]["reported"] = result.summary["eval_accuracy"]
  return out


def test_the_probe_keeps_its_accuracy_under_bfloat16_and_small_noise(
    probe_accuracies_under_perturbation,
):
  """With the variance floor, the bfloat16 encoder and 1e-3 relative noise
  (before or after whitening) leave the probe's accuracy within a point of
  float32's; without it (floor 0, the behaviour before) they break it."""
  floor = config_lib.ProbeConfig().variance_floor
  robust = probe_accuracies_under_perturbation[floor]
  assert robust["float32"] == pytest.approx(robust["reported"], abs=1e-3)
  assert robust["float32"] > 0.25  # well above chance (0.1) on 10 classes
  for how in ("bfloat16", "noisy pooled tokens", "noisy embedding"):
    assert abs(robust[how] - robust["float32"]) <= 0.01, (how, robust)
  fragile = probe_accuracies_under_perturbation[0.0]
  assert min(fragile["bfloat16"], fragile["noisy pooled tokens"]) < fragile["float32"] - 0.05
  # Only the rounding noise's directions are dropped: float32 keeps its accuracy.
  assert robust["float32"] >= fragile["float32"] - 0.01
