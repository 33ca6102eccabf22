"""Representation quality measures shared by the probe engine, the
benchmarks and the notebooks."""

from typing import Optional

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                query_features: np.ndarray, k: int = 20,
                temperature: float = 0.07, num_classes: Optional[int] = None,
                chunk: int = 1024) -> np.ndarray:
  """Weighted k-NN on cosine similarity (as in InstDisc/DINO): each of the k
  nearest training embeddings votes for its label with exp(sim / T).
  Labels are ids in [0, num_classes) (default: up to the largest train label).

  Returns the predicted labels [Q]; works in chunks so memory stays small.
  """
  train_labels = np.asarray(train_labels)
  if num_classes is None:
    num_classes = int(train_labels.max()) + 1
  train = l2_normalise(train_features.astype(np.float32))
  query = l2_normalise(query_features.astype(np.float32))
  k = min(k, len(train))
  predictions = []
  for start in range(0, len(query), chunk):
    sims = query[start:start + chunk] @ train.T                  # [c, N]
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]           # [c, k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    votes = np.zeros((len(top), num_classes))
    np.add.at(votes, (np.arange(len(top))[:, None], train_labels[top]),
              np.exp(top_sims / temperature))
    predictions.append(votes.argmax(1))
  return np.concatenate(predictions)


def evaluate_knn(train_features, train_labels, query_features, query_labels,
                 k: int = 20, **kwargs) -> float:
  """Top-1 accuracy of `knn_predict` on labelled queries."""
  predicted = knn_predict(train_features, train_labels, query_features, k, **kwargs)
  return float((predicted == np.asarray(query_labels)).mean())
