"""Representation quality measures shared by the probe engine, the exported
classifier (its k-NN output), the benchmarks and the notebooks."""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

KNN_TEMPERATURE = 0.07  # InstDisc's and DINO's


def l2_normalise(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, D] rows of length 1 (zero rows stay zero)."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def with_relative_noise(x: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
  """Rows of x [N, D] each moved by `scale` x its norm in a random direction:
  what a less exact encoder (bfloat16, a GPU's TF32) may do to embeddings."""
  noise = rng.normal(size=x.shape).astype(np.float32)
  noise *= scale * np.linalg.norm(x, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1)[:, None]
  return x + noise


def fit_whitening(
    features: np.ndarray, shrinkage: float = 1e-4, floor: float = 0.0
) -> Tuple[np.ndarray, np.ndarray]:
  """PCA whitening fit on (unlabelled) training embeddings [N, D]: returns
  (mean [D], matrix [D, D]) float32 such that (x - mean) @ matrix has about
  identity covariance. Eigenvalues are shrunk by `shrinkage` x the largest
  before the inverse square root, so near-empty directions are not blown
  up into noise; directions whose eigenvalue is below `floor` x the largest
  are dropped (their columns are zero, so whatever the encoder puts there,
  e.g. the rounding of a bfloat16 or TF32 matmul, never reaches the
  embedding).

  Why: MAE embeddings are anisotropic (a few directions carry most of the
  variance), and cosine similarity on them mostly measures those
  directions; whitened, every direction counts the same (PCA whitening of
  retrieval descriptors, Jegou & Chum 2012). The dropped ones are not
  features: each LayerNorm'ed block output has an exactly constant
  direction (its values' normalised sum), whose variance in float32 is
  rounding noise."""
  x = features.astype(np.float64)
  mean = x.mean(axis=0)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x - mean, rowvar=False))
  eigenvalues = np.maximum(eigenvalues, 0.0)
  matrix = eigenvectors / np.sqrt(eigenvalues + shrinkage * eigenvalues.max() + 1e-12)
  matrix[:, eigenvalues < floor * eigenvalues.max()] = 0.0
  return mean.astype(np.float32), matrix.astype(np.float32)


def knn_votes(
    queries: tf.Tensor,
    bank: tf.Tensor,
    bank_labels: tf.Tensor,
    k: int,
    num_classes: int,
    temperature: float = KNN_TEMPERATURE,
    bank_normalised: bool = False,
) -> tf.Tensor:
  """Weighted k-NN on cosine similarity (as in InstDisc/DINO): each of the k
  nearest bank embeddings votes for its label with exp(sim / T).

  queries [Q, D] and bank [N, D] (any scale and float dtype), bank_labels
  [N] ids in [0, num_classes) -> the votes as class probabilities [Q, K]
  float32. The exported classifier's k-NN output and `knn_predict` are this
  function. `bank_normalised`: the bank's rows are already unit length (the
  exported classifier's stored bank), so they are used as they are.
  """
  queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=-1)
  bank = tf.cast(bank, tf.float32)
  if not bank_normalised:  # a stored bank is normalised once, not on every call
    bank = tf.math.l2_normalize(bank, axis=-1)
  sims = tf.matmul(queries, bank, transpose_b=True)  # [Q, N]
  top_sims, top = tf.math.top_k(sims, k)  # [Q, k]
  # exp((s - 1) / T): the same ratios as exp(s / T), never overflows.
  weights = tf.exp((top_sims - 1.0) / temperature)
  votes = tf.reduce_sum(
      tf.one_hot(tf.gather(bank_labels, top), num_classes) * weights[..., None], axis=1
  )  # [Q, K]
  return votes / tf.reduce_sum(votes, axis=-1, keepdims=True)


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    k: int = 20,
    temperature: float = KNN_TEMPERATURE,
    num_classes: Optional[int] = None,
    chunk: int = 1024,
    bank_normalised: bool = False,
) -> np.ndarray:
  """`knn_votes`' predicted labels [Q] with the training embeddings as the
  bank. Labels are ids in [0, num_classes) (default: up to the largest train
  label). Works in chunks of queries so memory stays small."""
  train_labels = np.asarray(train_labels)
  if num_classes is None:
    num_classes = int(train_labels.max()) + 1
  bank = tf.cast(tf.constant(train_features), tf.float32)
  if not bank_normalised:  # once, not per chunk of queries
    bank = tf.math.l2_normalize(bank, axis=-1)
  labels = tf.constant(train_labels)
  k = min(k, len(train_features))
  # Eager: a few large ops a chunk, and no function traced anew on every call.
  return np.concatenate(
      [
          np.argmax(
              knn_votes(
                  tf.constant(query_features[start : start + chunk], tf.float32),
                  bank,
                  labels,
                  k,
                  num_classes,
                  temperature,
                  bank_normalised=True,
              ),
              axis=1,
          )
          for start in range(0, len(query_features), chunk)
      ]
  )


def evaluate_knn(
    train_features, train_labels, query_features, query_labels, k: int = 20, **kwargs
) -> float:
  """Top-1 accuracy of `knn_predict` on labelled queries."""
  predicted = knn_predict(train_features, train_labels, query_features, k, **kwargs)
  return float((predicted == np.asarray(query_labels)).mean())
