"""k-NN accuracy on embeddings."""

import numpy as np

from models.evaluation import evaluate_knn, fit_whitening, knn_predict


def test_knn_separates_clusters_and_matches_brute_force():
  rng = np.random.RandomState(0)
  centres = rng.randn(10, 16) * 5
  train_y = np.repeat(np.arange(10), 30)
  train = centres[train_y] + rng.randn(300, 16)
  query_y = np.repeat(np.arange(10), 5)
  query = centres[query_y] + rng.randn(50, 16)
  assert evaluate_knn(train, train_y, query, query_y, k=20) == 1.0

  # Same votes as a plain sort-based implementation, chunked or not.
  got = knn_predict(train, train_y, query, k=7, chunk=8)
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  qn = query / np.linalg.norm(query, axis=1, keepdims=True)
  sims = qn @ tn.T
  expected = []
  for row in sims:
    top = np.argsort(-row)[:7]
    votes = np.bincount(train_y[top], weights=np.exp(row[top] / 0.07), minlength=10)
    expected.append(votes.argmax())
  np.testing.assert_array_equal(got, expected)


def test_knn_takes_more_than_ten_classes():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(15, 8)) * 10
  train_y = np.repeat(np.arange(15), 6)
  train = centres[train_y] + rng.normal(size=(90, 8))
  query_y = np.arange(15)
  assert evaluate_knn(train, train_y, centres[query_y], query_y, k=5) == 1.0
  assert evaluate_knn(train, train_y, centres[query_y], query_y, k=5, num_classes=20) == 1.0


def test_whitening_decorrelates_the_train_features_and_shrinks_empty_directions():
  rng = np.random.default_rng(2)
  mixing = rng.normal(size=(6, 6)) * np.array([10.0, 5.0, 1.0, 0.5, 0.1, 0.01])
  x = rng.normal(size=(5000, 6)) @ mixing.T + 3.0  # anisotropic, off-centre
  mean, matrix = fit_whitening(x, shrinkage=0.0)
  white = (x - mean) @ matrix
  np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(6), atol=1e-3)
  # With shrinkage, a direction of (almost) no variance is not blown up.
  degenerate = np.concatenate([x, np.zeros((5000, 1))], axis=1)
  _, matrix = fit_whitening(degenerate, shrinkage=1e-4)
  assert np.isfinite(matrix).all()
  assert np.abs((degenerate - degenerate.mean(0)) @ matrix).max() < 1e3
