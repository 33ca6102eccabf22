"""Unit tests of the joint-embedding terms (models/joint_embedding.py): each
loss against a NumPy reference, the views' shapes and token counts, where
the gradients go, and the momentum teacher."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from models.config import get_profile
from models.joint_embedding import build_mae

TINY = dataclasses.replace(get_profile("smoke").model, contrastive_weight=0.0)


def test_uniformity_term_measures_collapse_and_adds_to_the_loss():
  from models.joint_embedding import uniformity_loss

  same = tf.ones([4, 5, 8])  # every image one direction
  spread = tf.reshape(tf.eye(8)[:4], [4, 1, 8]) * tf.ones([1, 5, 1])  # orthogonal
  assert float(uniformity_loss(same, 0.1)) == pytest.approx(100.0)
  assert float(uniformity_loss(spread, 0.1)) == pytest.approx(100.0 / 4)  # the diagonal only
  imgs = tf.random.normal([4, 32, 32, 3])
  noise = tf.random.uniform([4, 64])
  tf.keras.utils.set_random_seed(0)
  pure = build_mae(TINY)
  tf.keras.utils.set_random_seed(0)
  umae = build_mae(dataclasses.replace(TINY, uniformity_weight=0.01))
  umae.set_weights(pure.get_weights())
  latent, _, _ = pure.encoder.forward_masked(imgs, TINY.mask_ratio, noise)
  expected = float(pure(imgs, noise=noise)[0]) + 0.01 * float(uniformity_loss(latent, 0.1))
  assert float(umae(imgs, noise=noise)[0]) == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_is_infonce_with_the_other_view_as_positive():
  from models.joint_embedding import contrastive_loss

  rng = np.random.RandomState(0)
  z = rng.randn(6, 5).astype(np.float32)  # 3 images x 2 views, view-major
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  logits = zn @ zn.T / 0.2
  np.fill_diagonal(logits, -np.inf)
  positives = (np.arange(6) + 3) % 6
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -log_softmax[np.arange(6), positives].mean()
  assert float(contrastive_loss(tf.constant(z), 0.2)) == pytest.approx(expected, rel=1e-5)
  # Two views that agree, far from the other images': near zero.
  agreeing = np.concatenate([np.eye(5)[:3], np.eye(5)[:3]]).astype(np.float32)
  assert float(contrastive_loss(tf.constant(agreeing), 0.05)) < 1e-6


def test_two_views_are_masked_apart_reconstructed_both_and_tied_by_the_term():
  from models.joint_embedding import contrastive_loss, merge_views
  from models.mae import pool_tokens

  cfg = dataclasses.replace(TINY, contrastive_weight=0.5)
  tf.keras.utils.set_random_seed(0)
  can = build_mae(cfg)
  views = tf.random.normal([4, 2, 32, 32, 3])
  noise = tf.random.uniform([4, 2, 64])
  loss, pred, mask = can(views, noise=noise)
  assert pred.shape == (8, 64, 48) and mask.shape == (8, 64)
  flat_imgs, flat_noise = merge_views(views), merge_views(noise)
  np.testing.assert_array_equal(flat_imgs[4].numpy(), views[0, 1].numpy())  # view-major
  # Same weights without the term (views flattened): the loss differs by exactly it.
  recon, _, _ = can(flat_imgs, noise=flat_noise)
  latent, _, _ = can.encoder.forward_masked(flat_imgs, cfg.mask_ratio, flat_noise)
  term = contrastive_loss(can.projector(pool_tokens(latent)), cfg.contrastive_tau)
  assert float(loss) == pytest.approx(float(recon) + 0.5 * float(term), rel=1e-5)
  # The term trains with the MAE (the projector gets gradients) under fit's step.
  from models.engine_pretrain import PretrainingModel

  trainer = PretrainingModel(can)
  trainer.compile(optimizer=tf.keras.optimizers.AdamW(1e-3))
  before = [v.numpy().copy() for v in can.projector.trainable_variables]
  trainer.train_step(views)
  assert all(
      not np.allclose(b, v.numpy()) for b, v in zip(before, can.projector.trainable_variables)
  )


def test_contrastive_term_can_project_the_last_blocks_side_by_side():
  """contrastive_blocks = k: the projector sees the k blocks' pooled tokens
  (k * D), the decoder still the last block's, and the early blocks get the
  term's gradient through their own pooled tokens."""
  from models.joint_embedding import contrastive_loss, merge_views
  from models.mae import pool_tokens

  cfg = dataclasses.replace(TINY, contrastive_weight=0.5, contrastive_blocks=2)
  tf.keras.utils.set_random_seed(0)
  can = build_mae(cfg)
  assert can.projector.fc1.kernel.shape == (2 * cfg.embed_dim, cfg.projector_hidden)
  views = tf.random.normal([4, 2, 32, 32, 3])
  noise = tf.random.uniform([4, 2, 64])
  loss, pred, _ = can(views, noise=noise)
  flat_imgs, flat_noise = merge_views(views), merge_views(noise)
  recon, recon_pred, _ = can(flat_imgs, noise=flat_noise)
  np.testing.assert_allclose(pred.numpy(), recon_pred.numpy(), rtol=1e-5, atol=1e-6)
  both, _, _ = can.encoder.forward_masked(flat_imgs, cfg.mask_ratio, flat_noise, 2)
  last, _, _ = can.encoder.forward_masked(flat_imgs, cfg.mask_ratio, flat_noise)
  assert both.shape == (8, 16, 2 * cfg.embed_dim)
  np.testing.assert_allclose(both[..., cfg.embed_dim :].numpy(), last.numpy(), rtol=1e-6)
  term = contrastive_loss(can.projector(pool_tokens(both)), cfg.contrastive_tau)
  assert float(loss) == pytest.approx(float(recon) + 0.5 * float(term), rel=1e-5)
  with pytest.raises(ValueError, match="contrastive_blocks must be in"):
    get_profile("smoke", {"model": {"contrastive_blocks": 3}})


def test_momentum_contrastive_loss_is_moco_v3_infonce_against_the_other_views_keys():
  from models.joint_embedding import momentum_contrastive_loss

  rng = np.random.RandomState(1)
  q, k = rng.randn(6, 5).astype(np.float32), rng.randn(6, 5).astype(np.float32)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  kn = k / np.linalg.norm(k, axis=1, keepdims=True)

  def ce(queries, keys):
    logits = queries @ keys.T / 0.2
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.diag(log_softmax).mean()

  expected = (ce(qn[:3], kn[3:]) + ce(qn[3:], kn[:3])) / 2
  assert float(momentum_contrastive_loss(tf.constant(q), tf.constant(k), 0.2)) == pytest.approx(
      expected, rel=1e-5
  )
  # The keys carry no gradient; the queries do.
  qv, kv = tf.Variable(q), tf.Variable(k)
  with tf.GradientTape() as tape:
    loss = momentum_contrastive_loss(qv, kv, 0.2)
  grad_q, grad_k = tape.gradient(loss, [qv, kv])
  assert grad_k is None and float(tf.reduce_max(tf.abs(grad_q))) > 0


def test_teacher_momentum_rises_from_its_base_to_one_on_a_cosine():
  from models.joint_embedding import teacher_momentum

  values = [float(teacher_momentum(0.99, p)) for p in (0.0, 0.5, 1.0, 2.0)]
  assert values == pytest.approx([0.99, 0.995, 1.0, 1.0])


@pytest.mark.parametrize("teacher_mask_ratio", [0.0, 0.5])
def test_the_momentum_teacher_follows_the_student_by_ema_never_by_gradient(teacher_mask_ratio):
  """The teacher starts as a copy of the encoder and projector, has no
  trainable variable, and after a step equals m * itself + (1 - m) * the
  updated student; its keys have the projection's shape; the loss falls on
  a fixed tiny batch."""
  from models.engine_pretrain import PretrainingModel
  from models.joint_embedding import teacher_momentum

  cfg = dataclasses.replace(
      TINY, contrastive_weight=0.5, teacher_momentum=0.9, teacher_mask_ratio=teacher_mask_ratio
  )
  tf.keras.utils.set_random_seed(0)
  mae = build_mae(cfg)
  pairs = mae.teacher_pairs()
  assert len(pairs) == len(mae.encoder.weights) + len(mae.projector.weights)
  assert all(np.array_equal(t.numpy(), s.numpy()) for t, s in pairs)
  trainable = {id(v) for v in mae.trainable_variables}
  assert not any(id(t) in trainable for t, _ in pairs)
  assert {id(v) for v in mae.predictor.trainable_variables} <= trainable
  views = tf.random.normal([8, 2, 32, 32, 3])
  keys = mae.teacher_keys(tf.reshape(tf.transpose(views, [1, 0, 2, 3, 4]), [16, 32, 32, 3]))
  assert keys.shape == (16, cfg.projector_dim)

  trainer = PretrainingModel(mae, total_steps=40)
  trainer.compile(optimizer=tf.keras.optimizers.AdamW(1e-3))
  losses = []
  for step in range(6):
    teacher_before = [t.numpy().copy() for t, _ in pairs]
    losses.append(float(trainer.train_step(views)["loss"]))
    m = float(teacher_momentum(0.9, (step + 1) / 40))
    for (t, s), before in zip(pairs, teacher_before):
      np.testing.assert_allclose(t.numpy(), m * before + (1 - m) * s.numpy(), rtol=1e-5, atol=1e-6)
  assert losses[-1] < losses[0]
  assert not all(np.array_equal(t.numpy(), s.numpy()) for t, s in pairs)


def _np_cross_entropy(queries, keys, tau):
  """Mean InfoNCE of rows of `queries` against `keys`: row j's positive is key j mod B."""
  logits = queries @ keys.T / tau
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  labels = np.arange(len(queries)) % len(keys)
  return -log_softmax[np.arange(len(queries)), labels].mean()


def test_local_contrastive_loss_matches_numpy_and_leaves_the_global_keys_alone():
  from models.joint_embedding import local_contrastive_loss

  rng = np.random.RandomState(2)
  b, v = 3, 4
  local = rng.randn(v * b, 5).astype(np.float32)
  keys = rng.randn(2 * b, 5).astype(np.float32)
  ln = local / np.linalg.norm(local, axis=1, keepdims=True)
  kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
  expected = (_np_cross_entropy(ln, kn[:b], 0.1) + _np_cross_entropy(ln, kn[b:], 0.1)) / 2
  lv, kv = tf.Variable(local), tf.Variable(keys)
  with tf.GradientTape() as tape:
    loss = local_contrastive_loss(lv, kv, 0.1)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  grad_local, grad_keys = tape.gradient(loss, [lv, kv])
  assert grad_keys is None and float(tf.reduce_max(tf.abs(grad_local))) > 0


def test_variance_covariance_loss_matches_numpy_vicreg():
  from models.joint_embedding import COVARIANCE_SHARE, variance_covariance_loss

  rng = np.random.RandomState(3)
  z = (rng.randn(16, 6) * [0.1, 0.5, 1.0, 2.0, 3.0, 0.01]).astype(np.float32)
  z[:, 1] += 0.8 * z[:, 2]  # correlated dimensions
  centred = z.astype(np.float64) - z.mean(0)
  std = np.sqrt(centred.var(0, ddof=1) + 1e-4)
  cov = centred.T @ centred / (len(z) - 1)
  off = cov - np.diag(np.diag(cov))
  expected = np.maximum(0.0, 1.0 - std).mean() + COVARIANCE_SHARE * (off**2).sum() / z.shape[1]
  assert float(variance_covariance_loss(tf.constant(z))) == pytest.approx(expected, rel=1e-5)
  # Spread, decorrelated dimensions (std >= 1, diagonal covariance) cost nothing.
  whitened = np.linalg.qr(rng.randn(64, 6))[0] * np.sqrt(63) * 1.5
  assert (
      float(variance_covariance_loss(tf.constant(whitened - whitened.mean(0), tf.float32))) < 1e-3
  )


def test_a_local_view_is_fed_at_its_own_size_with_positions_over_the_whole_image():
  """A 16 x 16 local view at patch 4 is 16 tokens; its positions are the
  full grid's sin-cos function sampled at the 4 x 4 cells' centres, and a
  view the full image's size keeps the full grid's table."""
  from models.mae import sincos_pos_embed

  mae = build_mae(dataclasses.replace(TINY, contrastive_weight=0.5))
  enc = mae.encoder
  local = tf.random.normal([3, 16, 16, 3])
  assert enc(local).shape == (3, 16, TINY.embed_dim)
  assert enc.embed(local, last_blocks=None).shape == (3, TINY.depth * TINY.embed_dim)
  np.testing.assert_array_equal(sincos_pos_embed(32, 8, span=8), sincos_pos_embed(32, 8))
  quarter = sincos_pos_embed(32, 4, span=8)
  full = sincos_pos_embed(32, 8)
  # Cell (1, 2) of the 4 x 4 grid covers rows 2-3 and columns 4-5 of the
  # 8 x 8 one: the sin-cos function at its centre, (2.5, 4.5).
  omega = 1.0 / 10000 ** (np.arange(8) / 8.0)

  def at(pos):
    return np.concatenate([np.sin(pos * omega), np.cos(pos * omega)])

  np.testing.assert_allclose(quarter[1 * 4 + 2], np.concatenate([at(2.5), at(4.5)]), atol=1e-6)
  np.testing.assert_allclose(full[3 * 8 + 5], np.concatenate([at(3.0), at(5.0)]), atol=1e-6)
  x = enc._embed(local) - enc.patch_embed(
      tf.reshape(
          tf.transpose(tf.reshape(local, [3, 4, 4, 4, 4, 3]), [0, 1, 3, 2, 4, 5]), [3, 16, 48]
      )
  )
  np.testing.assert_allclose(x[0].numpy(), quarter, atol=1e-5)


def test_the_augmentation_makes_local_views_beside_the_two_global_views():
  from models.data import LOCAL_VIEWS_KEY, VIEWS_KEY, Augmentation

  aug = Augmentation(0.2, 0.4, views=2, local_views=3, local_view_size=16, downsample_prob=0.5)
  images = tf.random.normal([5, 32, 32, 3])
  batch = aug(images, tf.constant([0, 7], tf.int64))
  assert batch[VIEWS_KEY].shape == (5, 2, 32, 32, 3)
  assert batch[LOCAL_VIEWS_KEY].shape == (5, 3, 16, 16, 3)
  again = aug(images, tf.constant([0, 7], tf.int64))  # stateless: the same batch again
  np.testing.assert_array_equal(batch[LOCAL_VIEWS_KEY].numpy(), again[LOCAL_VIEWS_KEY].numpy())
  views = batch[LOCAL_VIEWS_KEY].numpy()
  assert not np.allclose(views[:, 0], views[:, 1])  # each local view crops on its own
  with pytest.raises(ValueError, match="local_views need two global views"):
    Augmentation(views=1, local_views=2)


def test_random_downsample_blurs_like_a_thumbnail_scaled_back_up():
  from models.data import random_downsample

  images = tf.random.normal([64, 32, 32, 3])
  always = random_downsample(images, 1.0, 0.5, tf.constant([1, 2]), max_scale=0.5)
  direct = tf.image.resize(tf.image.resize(images, [16, 16], "area"), [32, 32], "bilinear")
  np.testing.assert_allclose(always.numpy(), direct.numpy(), atol=1e-5)
  never = random_downsample(images, 0.0, 0.5, tf.constant([1, 2]))
  np.testing.assert_array_equal(never.numpy(), images.numpy())
  half = random_downsample(images, 0.5, 0.5, tf.constant([1, 2]), max_scale=0.5).numpy()
  changed = np.abs(half - images.numpy()).reshape(64, -1).max(1) > 0
  assert 16 < changed.sum() < 48


@pytest.mark.parametrize("teacher", [0.0, 0.9], ids=["student_keys", "momentum_teacher"])
def test_multi_crop_loss_adds_its_terms_and_gradients_reach_the_encoder_through_every_view(
    teacher,
):
  """The loss with local views and the VC term is the two-view loss plus
  exactly the weighted local InfoNCE and VICReg terms, and every view's
  pixels (global and local) get a gradient through the encoder."""
  from models.joint_embedding import (
      contrastive_loss,
      local_contrastive_loss,
      merge_views,
      variance_covariance_loss,
  )

  cfg = dataclasses.replace(
      TINY, contrastive_weight=0.5, variance_covariance_weight=0.2, teacher_momentum=teacher
  )
  tf.keras.utils.set_random_seed(0)
  mae = build_mae(cfg)
  views = tf.Variable(tf.random.normal([4, 2, 32, 32, 3]))
  local = tf.Variable(tf.random.normal([4, 3, 16, 16, 3]))
  noise = tf.random.uniform([4, 2, 64])
  with tf.GradientTape() as tape:
    loss, pred, mask = mae(views, noise=noise, local_views=local)
  assert pred.shape == (8, 64, 48) and mask.shape == (8, 64)  # the global views only
  grad_views, grad_local = tape.gradient(loss, [views, local])
  per_view = tf.reduce_sum(tf.abs(grad_views), axis=[2, 3, 4]).numpy()  # [B, 2]
  per_local = tf.reduce_sum(tf.abs(grad_local), axis=[2, 3, 4]).numpy()  # [B, V]
  assert (per_view > 0).all() and (per_local > 0).all()

  flat, flat_noise = merge_views(views), merge_views(noise)
  recon = mae.forward_loss(flat, *mae(flat, noise=flat_noise)[1:])
  latent, _, _ = mae.forward_encoder(flat, flat_noise)
  z = mae.project(latent)
  zl = mae.forward_local(local)
  assert zl.shape == (12, cfg.projector_dim)
  if teacher:
    from models.joint_embedding import momentum_contrastive_loss

    keys = mae.teacher_keys(flat, flat_noise)
    term = momentum_contrastive_loss(mae.predictor(z), keys, cfg.contrastive_tau)
    term += local_contrastive_loss(mae.predictor(zl), keys, cfg.contrastive_tau)
  else:
    term = contrastive_loss(z, cfg.contrastive_tau)
    term += local_contrastive_loss(zl, z, cfg.contrastive_tau)
  groups = tf.split(z, 2) + tf.split(zl, 3)
  vc = sum(float(variance_covariance_loss(g)) for g in groups) / 5
  assert float(loss) == pytest.approx(float(recon) + 0.5 * float(term) + 0.2 * vc, rel=1e-5)


def test_multi_crop_batches_train_under_fit_with_xla_splits():
  """A dict batch of global and local views goes through the engine's step,
  split into jit-compiled micro-batches, and the loss falls."""
  from models.engine_pretrain import PretrainingModel
  from models.data import LOCAL_VIEWS_KEY, VIEWS_KEY

  cfg = dataclasses.replace(TINY, contrastive_weight=0.5, variance_covariance_weight=0.1)
  tf.keras.utils.set_random_seed(0)
  trainer = PretrainingModel(build_mae(cfg), xla_splits=2)
  trainer.compile(optimizer=tf.keras.optimizers.AdamW(1e-3))
  batch = {
      VIEWS_KEY: tf.random.normal([8, 2, 32, 32, 3]),
      LOCAL_VIEWS_KEY: tf.random.normal([8, 2, 16, 16, 3]),
  }
  losses = [float(trainer.train_step(batch)["loss"]) for _ in range(8)]
  assert losses[-1] < losses[0]


def test_local_views_and_the_vc_term_need_the_contrastive_term():
  with pytest.raises(ValueError, match="need model.contrastive_weight > 0"):
    get_profile("smoke", {"model": {"contrastive_weight": 0.0}, "pretrain": {"local_views": 2}})
  with pytest.raises(ValueError, match="local_view_size 10 must be a multiple"):
    get_profile("smoke", {"pretrain": {"local_views": 2, "local_view_size": 10}})


def test_an_mae_saved_before_the_joint_embedding_module_loads_and_embeds_the_same(tmp_path):
  """tests/data/mae_saved_bb5090a was written by commit bb5090a's code (the
  contrastive term, projector and momentum teacher still in models/mae.py),
  with its embedding of two seeded images: today's code loads every
  variable and embeds them the same."""
  import os
  import shutil

  from models import engine_pretrain
  from models.joint_embedding import JointEmbeddingMAE

  saved = os.path.join(os.path.dirname(__file__), "data", "mae_saved_bb5090a")
  mae = engine_pretrain.load_mae(saved)
  assert isinstance(mae, JointEmbeddingMAE) and mae.teacher is not None
  assert mae.cfg.variance_covariance_weight == 0.0
  imgs = tf.random.stateless_normal([2, 32, 32, 3], [0, 1])
  expected = np.load(os.path.join(saved, "embedding_of_seeded_images.npy"))
  np.testing.assert_allclose(mae.embed(imgs).numpy(), expected, rtol=1e-5, atol=1e-6)
  # A warm start reads it into a model of today's recipe with the same architecture.
  copy = shutil.copytree(saved, tmp_path / "mae")
  target = build_mae(dataclasses.replace(mae.cfg, variance_covariance_weight=0.1))
  engine_pretrain._read_weights(target, str(copy))
  np.testing.assert_allclose(target.embed(imgs).numpy(), expected, rtol=1e-5, atol=1e-6)
