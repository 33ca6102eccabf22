"""The duplicate projection (`models.near_duplicates`): the learned whitening
against its definition, the threshold's false-positive share, the copies the
fit makes; and the smoke pipeline's pushed model carrying what its probe
Trainer fit."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from models import names, near_duplicates


def _pairs(rng, n=400, dims=12, nuisance=(0, 1, 2)):
  """Originals [n, dims] with unequal spreads, and 3 copies each that move
  mostly along the `nuisance` axes (large) and a little along all (small)."""
  originals = rng.normal(size=(n, dims)) * np.linspace(3.0, 0.5, dims)
  moves = rng.normal(size=(3, n, dims)) * 0.05
  moves[..., list(nuisance)] += rng.normal(size=(3, n, len(nuisance))) * 4.0
  return originals, originals[None] + moves


def test_the_projection_whitens_the_copies_moves_and_orders_the_images_spread():
  """Learned whitening's definition (shrinkage 0): under P the moves of
  copies have identity covariance, and the originals' covariance is diagonal
  with its entries descending; the axes copies move along come last."""
  originals, copies = _pairs(np.random.default_rng(0))
  dims = originals.shape[1]
  projection = near_duplicates.fit_projection(originals, copies, dims, shrinkage=0.0)
  assert projection.shape == (dims, dims) and projection.dtype == np.float32
  moves = (copies - originals[None]).reshape(-1, dims)
  np.testing.assert_allclose(
      projection.T @ (moves.T @ moves / len(moves)) @ projection, np.eye(dims), atol=1e-3
  )
  spread = projection.T @ np.cov(originals, rowvar=False) @ projection
  off_diagonal = spread - np.diag(np.diag(spread))
  assert np.abs(off_diagonal).max() < 1e-3 * np.abs(spread).max()
  assert np.all(np.diff(np.diag(spread)) <= 1e-6)
  # The three nuisance axes carry almost nothing of the first directions kept.
  first = near_duplicates.fit_projection(originals, copies, dims - 3, shrinkage=0.0)
  weight = np.abs(first) / np.abs(first).sum(axis=0)
  assert weight[:3].sum(axis=0).max() < 0.05

  # So copies score closer to their originals than under the identity.
  def cosine_to_original(p):
    a, b = originals @ p, copies[0] @ p
    return np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))

  assert cosine_to_original(first) > 0.99 > cosine_to_original(np.eye(dims))


def test_dims_are_capped_and_shrinkage_keeps_a_singular_fit_finite():
  originals, copies = _pairs(np.random.default_rng(1), n=50, dims=6)
  copies[:, :, 5] = originals[None, :, 5]  # axis 5 never moves: C_S singular
  projection = near_duplicates.fit_projection(originals, copies, 100)
  assert projection.shape == (6, 6) and np.all(np.isfinite(projection))


def test_the_threshold_flags_at_most_the_share_asked_and_is_the_lowest_that_does():
  rng = np.random.default_rng(2)
  vectors = rng.normal(size=(500, 16))
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  sims = unit @ unit.T
  np.fill_diagonal(sims, -np.inf)
  nearest = sims.max(axis=1)
  for share in (0.0, 0.01, 0.1):
    threshold = near_duplicates.calibrate_threshold(vectors, share)
    assert np.mean(nearest >= threshold) <= share
    assert np.mean(nearest >= threshold - 1e-3) > share  # the 1e-3 step below flags more
    assert threshold == round(threshold, 3)
  with pytest.raises(ValueError, match="at least 2 images, got 1"):
    near_duplicates.calibrate_threshold(vectors[:1], 0.01)
  # More held-out images than a corpus: the median of corpora drawn from
  # them, each one's threshold keeping the share asked on that corpus.
  draws = np.random.default_rng(5)
  corpora = [vectors[draws.choice(500, 100, replace=False)] for _ in range(9)]
  each = [near_duplicates.calibrate_threshold(c, 0.05, corpus=100) for c in corpora]
  assert near_duplicates.calibrate_threshold(
      vectors, 0.05, corpus=100, draws=9, seed=5
  ) == pytest.approx(float(np.median(each)))


def test_each_copy_is_an_image_file_within_the_ranges(cifar10_sample):
  (images, _), _ = cifar10_sample
  copies = near_duplicates.altered_copies(images[:20], seed=3)
  assert len(copies) == len(near_duplicates.FIT_ALTERATIONS) and all(len(c) == 20 for c in copies)
  low, high = (round(32 * s) for s in near_duplicates.DOWNSCALE)
  jpeg_errors = []
  for kind, files in zip(near_duplicates.FIT_ALTERATIONS, copies):
    for i, data in enumerate(files):
      image = Image.open(io.BytesIO(data))
      width, height = image.size
      if kind == "jpeg":
        assert image.format == "JPEG" and (width, height) == (32, 32)
        decoded = np.asarray(image.convert("RGB"), np.float64)
        jpeg_errors.append(np.abs(decoded - images[i]).mean())
      elif kind == "downscale":
        assert image.format == "PNG" and low <= width == height <= high
      elif kind == "upscale":
        assert image.format == "PNG" and 48 <= width == height <= 96
      else:
        assert image.format == "PNG" and 23 <= min(width, height) and max(width, height) <= 32
        assert (width, height) != (32, 32) and 32 - min(width, height) <= 6 + 3
  assert 0 < np.mean(jpeg_errors) and max(jpeg_errors) < 20  # re-compressed, still the images
  # Seeded per image: the same draws at any count.
  assert near_duplicates.altered_copies(images[:5], seed=3)[3] == copies[3][:5]
  with pytest.raises(ValueError, match=r"unknown alteration 'blur'"):
    near_duplicates.alter(images[0], "blur", np.random.default_rng(0))


def test_the_pushed_model_carries_the_projection_its_probe_trainer_fit(smoke_run, model_base):
  """The probe Trainer fit the projection on the smoke run's train split
  (a third held out for the threshold) and the Pusher pushed it with the
  model; `train_summary.json` says what was fit."""
  from serving.model_store import load_version

  model = load_version(model_base)
  projection, threshold = model.duplicate_projection()
  dim = model.saved_model.whitening_matrix.shape[1]
  assert projection.shape == (dim, min(smoke_run.run_config.search.duplicate_dims, dim))
  summaries = [
      os.path.join(root, names.SUMMARY_FILE)
      for root, _, found in os.walk(smoke_run.pipeline_root)
      if names.SUMMARY_FILE in found and names.PROBE_TRAINER in root
  ]
  assert summaries, f"no {names.SUMMARY_FILE} of {names.PROBE_TRAINER} under the run"
  with open(summaries[0]) as f:
    fit = json.load(f)["duplicates"]
  assert fit["calibration_images"] == 320 // 3 and fit["fit_images"] == 320 - 320 // 3
  assert fit["copies_per_image"] == len(near_duplicates.FIT_ALTERATIONS)
  assert fit["dims"] == projection.shape[1] and fit["threshold"] == pytest.approx(threshold)


def test_the_runs_corpus_comes_as_an_embeddings_file_with_the_projection(smoke_run):
  """`RunOutputs.corpus_embeddings` (the walkthrough's near-duplicates): the
  CorpusEmbedder's vectors, with the probe model's projection and threshold;
  each train image's nearest through it is itself."""
  from pipeline.run_outputs import RunOutputs
  from serving import duplicates

  run = RunOutputs.load(smoke_run.output_dir)
  corpus = run.corpus_embeddings()
  projection, threshold = run.probe_model().duplicate_projection()
  assert len(corpus.ids) == 320 and len(set(corpus.ids)) == 320
  np.testing.assert_array_equal(corpus.duplicate_projection, projection)
  assert corpus.duplicate_threshold == threshold
  found = duplicates.find_pairs(corpus, corpus, threshold=-1.0, max_per_item=1)
  assert all(p.id_a == p.id_b for p in found.pairs) and len(found.pairs) == 320
