"""Unit tests of the MAE model: patches, masking, loss, training step."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from models.config import get_profile
from models.mae import (
    Attention,
    LayerNorm,
    MaskedAutoencoder,
    masked_patch_loss,
    patchify,
    random_masking,
    sincos_pos_embed,
    unpatchify,
)

TINY = get_profile("smoke").model
TINY_CLS = dataclasses.replace(TINY, cls_token=True)


def test_patchify_unpatchify_round_trip():
  imgs = tf.random.normal([3, 32, 32, 3])
  patches = patchify(imgs, 4)
  assert patches.shape == (3, 64, 48)
  np.testing.assert_array_equal(unpatchify(patches, 4).numpy(), imgs.numpy())


def test_patchify_orders_patches_row_major():
  imgs = tf.reshape(tf.range(2 * 8 * 8 * 3, dtype=tf.float32), [2, 8, 8, 3])
  patches = patchify(imgs, 4).numpy()
  # Patch 1 is the top-right 4x4 block of image 0, flattened (row, col, channel).
  np.testing.assert_array_equal(patches[0, 1], imgs.numpy()[0, :4, 4:, :].reshape(-1))


def test_masking_keeps_exact_count_per_image():
  x = tf.random.normal([16, 64, 8])
  visible, mask, _ = random_masking(x, 0.75)
  assert visible.shape == (16, 16, 8)
  np.testing.assert_array_equal(mask.numpy().sum(axis=1), np.full(16, 48))


def test_masking_restore_indices_invert_the_shuffle():
  x = tf.random.normal([4, 64, 8])
  noise = tf.random.uniform([4, 64])
  visible, mask, ids_restore = random_masking(x, 0.75, noise)
  ids_shuffle = tf.argsort(noise, axis=1)
  # Shuffled order gathered with ids_restore gives back the original order.
  np.testing.assert_array_equal(
      tf.gather(ids_shuffle, ids_restore, batch_dims=1).numpy(), np.tile(np.arange(64), (4, 1))
  )
  # The visible tokens are exactly the unmasked positions, in shuffle order.
  for b in range(4):
    kept = np.where(mask.numpy()[b] == 0)[0]
    np.testing.assert_array_equal(np.sort(ids_shuffle.numpy()[b, :16]), kept)
    np.testing.assert_array_equal(visible.numpy()[b], x.numpy()[b, ids_shuffle.numpy()[b, :16]])


def test_masks_differ_between_images():
  _, mask, _ = random_masking(tf.zeros([32, 64, 4]), 0.75)
  assert len({m.tobytes() for m in mask.numpy()}) == 32


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_counts_masked_patches_only(norm_pix):
  imgs = tf.random.normal([2, 32, 32, 3])
  target = patchify(imgs, 4)
  if norm_pix:
    mean, var = tf.nn.moments(target, axes=[-1], keepdims=True)
    target = (target - mean) / tf.sqrt(var + 1e-6)
  mask = tf.cast(tf.random.uniform([2, 64]) < 0.75, tf.float32)
  garbage = tf.random.normal(target.shape) * 10
  # Perfect on masked patches, garbage on visible ones: zero loss.
  pred = mask[..., None] * target + (1 - mask[..., None]) * garbage
  assert float(masked_patch_loss(imgs, pred, mask, 4, norm_pix)) < 1e-8
  # Garbage on masked patches: the loss is their mean squared error.
  pred = (1 - mask[..., None]) * target + mask[..., None] * garbage
  per_patch = np.square(garbage.numpy() - target.numpy()).mean(-1)
  expected = (per_patch * mask.numpy()).sum() / mask.numpy().sum()
  np.testing.assert_allclose(
      float(masked_patch_loss(imgs, pred, mask, 4, norm_pix)), expected, rtol=1e-5
  )


def test_sincos_pos_embed_is_distinct_per_position():
  pe = sincos_pos_embed(32, 8)
  assert pe.shape == (64, 32)
  assert len({row.tobytes() for row in pe}) == 64


@pytest.mark.parametrize("cfg", [TINY, TINY_CLS], ids=["mean_pool", "cls_token"])
def test_encoder_sees_only_visible_tokens_and_decoder_predicts_all(cfg):
  model = MaskedAutoencoder(cfg).build_for()
  imgs = tf.random.normal([3, 32, 32, 3])
  latent, mask, ids_restore = model.encoder.forward_masked(imgs, cfg.mask_ratio)
  assert latent.shape == (3, cfg.num_prefix_tokens + 16, cfg.embed_dim)
  pred = model.decoder(latent, ids_restore)
  assert pred.shape == (3, 64, cfg.patch_size**2 * 3)
  assert model.embed(imgs).shape == (3, cfg.embed_dim)
  # The per-token head is small: (Dd + 1) * p*p*3 parameters, not L*Dd*L*P.
  assert model.decoder.pred.count_params() == (cfg.decoder_embed_dim + 1) * 48


def test_embedding_is_the_patch_mean_or_the_cls_token():
  imgs = tf.random.normal([2, 32, 32, 3])
  plain = MaskedAutoencoder(TINY).build_for()
  tokens = plain.encoder(imgs)  # [B, L, D]
  assert tokens.shape == (2, 64, TINY.embed_dim)
  np.testing.assert_allclose(plain.embed(imgs), tf.reduce_mean(tokens, 1), atol=1e-6)
  cls = MaskedAutoencoder(TINY_CLS).build_for()
  tokens = cls.encoder(imgs)  # [B, 1 + L, D]
  assert tokens.shape == (2, 65, TINY.embed_dim)
  np.testing.assert_allclose(cls.embed(imgs), tokens[:, 0], atol=1e-6)
  # The [CLS] token is learned, and not weight-decayed (like the official MAE).
  from models.optimization import no_decay

  (token,) = [v for v in cls.trainable_variables if "cls_token" in v.name]
  assert token.shape == (1, 1, TINY.embed_dim) and no_decay(token)
  with tf.GradientTape() as tape:
    loss, _, _ = cls(imgs)
  assert float(tf.norm(tape.gradient(loss, token))) > 0


def test_decoder_uses_position_embeddings():
  """Same latent tokens, different restore order -> different predictions."""
  model = MaskedAutoencoder(TINY).build_for()
  latent = tf.random.normal([1, 16, TINY.embed_dim])
  ids = tf.range(64)[None]
  a = model.decoder(latent, ids)
  b = model.decoder(latent, tf.reverse(ids, [1]))
  assert not np.allclose(a.numpy(), b.numpy())


@pytest.mark.parametrize("cfg", [TINY, TINY_CLS], ids=["mean_pool", "cls_token"])
def test_train_step_reduces_loss_on_a_fixed_batch(cfg):
  from models.engine_pretrain import PretrainingModel

  tf.keras.utils.set_random_seed(0)
  model = MaskedAutoencoder(cfg).build_for()
  trainer = PretrainingModel(model)
  trainer.compile(optimizer=tf.keras.optimizers.AdamW(1e-3))
  imgs = tf.random.normal([8, 32, 32, 3])
  noise = tf.random.uniform([8, 64])
  before = float(model(imgs, noise=noise)[0])
  for _ in range(30):
    trainer.train_step(imgs)
  after = float(model(imgs, noise=noise)[0])
  assert after < 0.9 * before, (before, after)


def test_mixed_bfloat16_forward_returns_float32_loss():
  from models.precision import precision_policy

  with precision_policy("mixed_bfloat16"):
    model = MaskedAutoencoder(TINY).build_for()
    loss, pred, _ = model(tf.random.normal([2, 32, 32, 3]))
  assert loss.dtype == tf.float32 and pred.dtype == tf.bfloat16
  assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_layer_norm_matches_keras_and_keeps_float32_parameters():
  from models.precision import precision_policy

  x = tf.random.normal([6, 32]) * 3.0 + 1.0
  ours, keras_ln = LayerNorm(), tf.keras.layers.LayerNormalization(epsilon=1e-6)
  ours.build(x.shape), keras_ln.build(x.shape)
  gamma, beta = tf.random.normal([32]), tf.random.normal([32])
  ours.set_weights([gamma, beta]), keras_ln.set_weights([gamma, beta])
  np.testing.assert_allclose(ours(x), keras_ln(x), atol=1e-5)
  with precision_policy("mixed_bfloat16"):
    mixed = LayerNorm()
    y = mixed(tf.cast(x, tf.bfloat16))
  assert y.dtype == tf.bfloat16 and mixed.gamma.dtype == tf.float32


def test_attention_on_flattened_tokens_matches_per_head_reference():
  b, n, d, heads = 2, 5, 16, 4
  attn = Attention(d, heads)
  x = tf.random.normal([b, n, d])
  out = attn(tf.reshape(x, [b * n, d]), n)  # [B*N, D]
  qkv = attn.qkv(x)  # [B, N, 3D]
  q, k, v = tf.split(qkv, 3, axis=-1)
  per_head = []
  for h in range(heads):
    s = slice(h * d // heads, (h + 1) * d // heads)
    w = tf.nn.softmax(tf.matmul(q[..., s], k[..., s], transpose_b=True) / (d // heads) ** 0.5)
    per_head.append(tf.matmul(w, v[..., s]))
  expected = attn.proj(tf.concat(per_head, axis=-1))
  np.testing.assert_allclose(tf.reshape(out, [b, n, d]), expected, atol=1e-5)


def test_xla_compiled_forward_matches_plain_graph():
  """The train step is jit-compiled; serving graphs are not: same numbers."""
  model = MaskedAutoencoder(TINY).build_for()
  imgs, noise = tf.random.normal([4, 32, 32, 3]), tf.random.uniform([4, 64])
  plain = tf.function(lambda i, z: model(i, noise=z)[0])
  xla = tf.function(lambda i, z: model(i, noise=z)[0], jit_compile=True)
  np.testing.assert_allclose(plain(imgs, noise), xla(imgs, noise), rtol=1e-4)


def test_encoder_can_give_the_last_blocks_side_by_side():
  model = MaskedAutoencoder(TINY).build_for()
  enc, imgs = model.encoder, tf.random.normal([2, 32, 32, 3])
  np.testing.assert_allclose(enc(imgs, last_blocks=1), enc(imgs), atol=1e-6)
  x = enc._embed(imgs)
  outputs = []
  for blk in enc.blocks:
    x = blk(x)
    outputs.append(enc.norm(x))
  np.testing.assert_allclose(
      enc(imgs, last_blocks=2), tf.concat([outputs[-2], outputs[-1]], -1), atol=1e-5
  )
  # The embedding: each block's patch mean, side by side; None is every block.
  np.testing.assert_allclose(
      enc.embed(imgs, last_blocks=None),
      tf.concat([tf.reduce_mean(o, 1) for o in outputs], -1),
      atol=1e-5,
  )
  assert enc.embed(imgs, last_blocks=1).shape == (2, TINY.embed_dim)
  with pytest.raises(ValueError, match=r"last_blocks must be in \[1, 2\], got 3"):
    enc(imgs, last_blocks=3)


def test_uniformity_term_measures_collapse_and_adds_to_the_loss():
  from models.mae import uniformity_loss

  same = tf.ones([4, 5, 8])  # every image one direction
  spread = tf.reshape(tf.eye(8)[:4], [4, 1, 8]) * tf.ones([1, 5, 1])  # orthogonal
  assert float(uniformity_loss(same, 0.1)) == pytest.approx(100.0)
  assert float(uniformity_loss(spread, 0.1)) == pytest.approx(100.0 / 4)  # the diagonal only
  imgs = tf.random.normal([4, 32, 32, 3])
  noise = tf.random.uniform([4, 64])
  tf.keras.utils.set_random_seed(0)
  pure = MaskedAutoencoder(TINY).build_for()
  tf.keras.utils.set_random_seed(0)
  umae = MaskedAutoencoder(dataclasses.replace(TINY, uniformity_weight=0.01)).build_for()
  umae.set_weights(pure.get_weights())
  latent, _, _ = pure.encoder.forward_masked(imgs, TINY.mask_ratio, noise)
  expected = float(pure(imgs, noise=noise)[0]) + 0.01 * float(uniformity_loss(latent, 0.1))
  assert float(umae(imgs, noise=noise)[0]) == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_is_infonce_with_the_other_view_as_positive():
  from models.mae import contrastive_loss

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
  from models.mae import contrastive_loss, merge_views, pool_tokens

  cfg = dataclasses.replace(TINY, contrastive_weight=0.5)
  tf.keras.utils.set_random_seed(0)
  can = MaskedAutoencoder(cfg).build_for()
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
  from models.mae import contrastive_loss, merge_views, pool_tokens

  cfg = dataclasses.replace(TINY, contrastive_weight=0.5, contrastive_blocks=2)
  tf.keras.utils.set_random_seed(0)
  can = MaskedAutoencoder(cfg).build_for()
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
  from models.mae import momentum_contrastive_loss

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
  from models.mae import teacher_momentum

  values = [float(teacher_momentum(0.99, p)) for p in (0.0, 0.5, 1.0, 2.0)]
  assert values == pytest.approx([0.99, 0.995, 1.0, 1.0])


@pytest.mark.parametrize("teacher_mask_ratio", [0.0, 0.5])
def test_the_momentum_teacher_follows_the_student_by_ema_never_by_gradient(teacher_mask_ratio):
  """The teacher starts as a copy of the encoder and projector, has no
  trainable variable, and after a step equals m * itself + (1 - m) * the
  updated student; its keys have the projection's shape; the loss falls on
  a fixed tiny batch."""
  from models.engine_pretrain import PretrainingModel
  from models.mae import teacher_momentum

  cfg = dataclasses.replace(
      TINY, contrastive_weight=0.5, teacher_momentum=0.9, teacher_mask_ratio=teacher_mask_ratio
  )
  tf.keras.utils.set_random_seed(0)
  mae = MaskedAutoencoder(cfg).build_for()
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
