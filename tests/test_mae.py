"""Unit tests of the MAE model: patches, masking, loss, training step."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from models.config import get_profile
from models.joint_embedding import build_mae
from models.mae import (
    Attention,
    LayerNorm,
    masked_patch_loss,
    patchify,
    random_masking,
    sincos_pos_embed,
    unpatchify,
)

# The plain MAE (the smoke profile without its contrastive term).
TINY = dataclasses.replace(get_profile("smoke").model, contrastive_weight=0.0)
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
  model = build_mae(cfg)
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
  plain = build_mae(TINY)
  tokens = plain.encoder(imgs)  # [B, L, D]
  assert tokens.shape == (2, 64, TINY.embed_dim)
  np.testing.assert_allclose(plain.embed(imgs), tf.reduce_mean(tokens, 1), atol=1e-6)
  cls = build_mae(TINY_CLS)
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
  model = build_mae(TINY)
  latent = tf.random.normal([1, 16, TINY.embed_dim])
  ids = tf.range(64)[None]
  a = model.decoder(latent, ids)
  b = model.decoder(latent, tf.reverse(ids, [1]))
  assert not np.allclose(a.numpy(), b.numpy())


@pytest.mark.parametrize("cfg", [TINY, TINY_CLS], ids=["mean_pool", "cls_token"])
def test_train_step_reduces_loss_on_a_fixed_batch(cfg):
  from models.engine_pretrain import PretrainingModel

  tf.keras.utils.set_random_seed(0)
  model = build_mae(cfg)
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
    model = build_mae(TINY)
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
  model = build_mae(TINY)
  imgs, noise = tf.random.normal([4, 32, 32, 3]), tf.random.uniform([4, 64])
  plain = tf.function(lambda i, z: model(i, noise=z)[0])
  xla = tf.function(lambda i, z: model(i, noise=z)[0], jit_compile=True)
  np.testing.assert_allclose(plain(imgs, noise), xla(imgs, noise), rtol=1e-4)


def test_encoder_can_give_the_last_blocks_side_by_side():
  model = build_mae(TINY)
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
