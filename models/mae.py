"""Masked Autoencoder (He et al. 2021) with a ViT encoder, in tf.keras (Keras 2).

Follows the official `models_mae.py`: the encoder sees only the visible
patches, the decoder re-inserts mask tokens, adds its own position
embeddings and predicts every patch with a per-token linear head; the loss
counts masked patches only, optionally against per-patch normalised pixels.

Shapes: B batch, L = (H/p)^2 patches, D encoder width, Dd decoder width,
P = p*p*3 values per patch.
"""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from models.config import ModelConfig

LAYER_NORM_EPS = 1e-6


# --------------------------------------------------------------------------
# Patches and position embeddings
# --------------------------------------------------------------------------
def patchify(imgs: tf.Tensor, patch_size: int) -> tf.Tensor:
  """[B, H, W, C] -> [B, L, p*p*C], patches in row-major order."""
  b = tf.shape(imgs)[0]
  h, w, c = imgs.shape[1], imgs.shape[2], imgs.shape[3]
  gh, gw = h // patch_size, w // patch_size
  x = tf.reshape(imgs, [b, gh, patch_size, gw, patch_size, c])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # [B, gh, gw, p, p, C]
  return tf.reshape(x, [b, gh * gw, patch_size * patch_size * c])


def unpatchify(x: tf.Tensor, patch_size: int, channels: int = 3) -> tf.Tensor:
  """[B, L, p*p*C] -> [B, H, W, C]; the inverse of `patchify`."""
  b = tf.shape(x)[0]
  g = int(round(x.shape[1] ** 0.5))
  x = tf.reshape(x, [b, g, g, patch_size, patch_size, channels])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # [B, g, p, g, p, C]
  return tf.reshape(x, [b, g * patch_size, g * patch_size, channels])


def sincos_pos_embed(embed_dim: int, grid_size: int, span: Optional[int] = None) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, [grid_size**2, embed_dim].

  `span`: the grid the positions cover (default `grid_size`). A smaller
  view (a local crop) fed at its own size gets grid_size < span positions
  spread over the full image's range, the sin-cos function sampled where
  DINO's interpolated table would be: (i + 1/2) * span / grid_size - 1/2.
  """
  assert embed_dim % 4 == 0, "embed_dim must be divisible by 4"
  span = span or grid_size
  pos = (np.arange(grid_size, dtype=np.float64) + 0.5) * span / grid_size - 0.5
  gy, gx = np.meshgrid(pos, pos, indexing="ij")

  def embed_1d(pos):  # [L] -> [L, D/2]
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4) / (embed_dim / 4.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([embed_1d(gy), embed_1d(gx)], axis=1).astype(np.float32)


# --------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------
def random_masking(
    x: tf.Tensor, mask_ratio: float, noise: Optional[tf.Tensor] = None
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Per-image random masking by argsort of uniform noise.

  Args:
    x: [B, L, D] tokens.
    mask_ratio: fraction of tokens to drop.
    noise: optional [B, L] noise (for tests); uniform random otherwise.

  Returns:
    x_visible [B, L_keep, D], mask [B, L] (1 = masked, 0 = kept),
    ids_restore [B, L] that undoes the shuffle.
  """
  b = tf.shape(x)[0]
  length = x.shape[1]
  len_keep = int(length * (1 - mask_ratio))
  if noise is None:
    noise = tf.random.uniform([b, length])
  ids_shuffle = tf.argsort(noise, axis=1)  # small noise is kept
  ids_restore = tf.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :len_keep]
  x_visible = tf.gather(x, ids_keep, batch_dims=1)  # [B, L_keep, D]
  mask = tf.concat([tf.zeros([b, len_keep]), tf.ones([b, length - len_keep])], axis=1)
  mask = tf.gather(mask, ids_restore, batch_dims=1)  # [B, L] unshuffled
  return x_visible, mask, ids_restore


# --------------------------------------------------------------------------
# Transformer block
#
# Speed notes (benchmarks/RESULTS.md has the profiles): tokens are flattened
# to [B*N, D] inside a block so every projection is a 2-D MatMul (+ BiasAdd),
# which oneDNN runs (with AMX in bfloat16) instead of the tensordot reshapes
# of a Dense on 3-D input; the train step is
# jit-compiled (RuntimeConfig.jit_compile) so XLA fuses LayerNorm, GELU and
# the residual adds. Nothing here needs XLA at serving time.
# --------------------------------------------------------------------------
def layer_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float) -> tf.Tensor:
  """LayerNorm over the last axis, computed in float32, returned in x.dtype."""
  x32 = tf.cast(x, tf.float32)
  mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
  y = (x32 - mean) * tf.math.rsqrt(var + epsilon) * gamma + beta
  return tf.cast(y, x.dtype)


class LayerNorm(tf.keras.layers.Layer):
  """LayerNorm with float32 scale/offset, even under a mixed-precision policy."""

  def __init__(self, epsilon: float = LAYER_NORM_EPS, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def build(self, input_shape):
    """Creates the scale (gamma) and offset (beta), [D] float32."""
    dim = input_shape[-1]
    # experimental_autocast=False: read as float32 inside a bfloat16 layer.
    self.gamma = self.add_weight(
        name="gamma", shape=[dim], initializer="ones", experimental_autocast=False
    )
    self.beta = self.add_weight(
        name="beta", shape=[dim], initializer="zeros", experimental_autocast=False
    )
    super().build(input_shape)

  def call(self, x):
    """[..., D] -> [..., D], normalised over the last axis."""
    return layer_norm(x, self.gamma, self.beta, self.epsilon)


class Attention(tf.keras.layers.Layer):
  """Multi-head self-attention with one fused qkv projection."""

  def __init__(self, dim: int, num_heads: int, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.scale = self.head_dim**-0.5
    self.qkv = tf.keras.layers.Dense(3 * dim, name="qkv")
    self.proj = tf.keras.layers.Dense(dim, name="proj")

  def call(self, x, num_tokens: int):
    """X [B*N, D] (N = num_tokens) -> [B*N, D]."""
    qkv = tf.reshape(self.qkv(x), [-1, num_tokens, 3, self.num_heads, self.head_dim])
    # unstack, not qkv[i]: the gradient of each strided slice would write a
    # full-size zero tensor (a third of the step time); unstack's is one stack.
    q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # [B, H, N, Dh]
    attn = tf.matmul(q * self.scale, k, transpose_b=True)  # [B, H, N, N]
    attn = tf.nn.softmax(attn, axis=-1)
    out = tf.transpose(tf.matmul(attn, v), [0, 2, 1, 3])  # [B, N, H, Dh]
    return self.proj(tf.reshape(out, [-1, x.shape[-1]]))


class Block(tf.keras.layers.Layer):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.norm1 = LayerNorm(name="norm1")
    self.attn = Attention(dim, num_heads, name="attn")
    self.norm2 = LayerNorm(name="norm2")
    self.fc1 = tf.keras.layers.Dense(int(dim * mlp_ratio), activation=tf.nn.gelu, name="fc1")
    self.fc2 = tf.keras.layers.Dense(dim, name="fc2")

  def call(self, x):
    """[B, N, D] -> [B, N, D]."""
    n = x.shape[1]
    h = tf.reshape(x, [-1, self.dim])  # [B*N, D]
    h = h + self.attn(self.norm1(h), n)
    h = h + self.fc2(self.fc1(self.norm2(h)))
    return tf.reshape(h, [-1, n, self.dim])


# --------------------------------------------------------------------------
# Encoder and decoder
# --------------------------------------------------------------------------
def pool_tokens(latent: tf.Tensor, prefix_tokens: int = 0) -> tf.Tensor:
  """[B, T, D] -> [B, D] float32: the [CLS] token, else the tokens' mean."""
  latent = tf.cast(latent, tf.float32)
  return latent[:, 0] if prefix_tokens else tf.reduce_mean(latent, axis=1)


class Encoder(tf.keras.layers.Layer):
  """ViT encoder. `call` embeds all patches; `forward_masked` only visible ones.

  With `cfg.cls_token` a learned [CLS] token leads the tokens (T = 1 + N
  tokens for N patches; it has no position embedding) and is the embedding;
  without it (T = N), the embedding is the mean over the patch tokens.
  """

  def __init__(self, cfg: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    self.cfg = cfg
    grid = cfg.image_size // cfg.patch_size
    self.pos_embed = tf.constant(sincos_pos_embed(cfg.embed_dim, grid)[None])
    self.patch_embed = tf.keras.layers.Dense(cfg.embed_dim, name="patch_embed")
    if cfg.cls_token:
      # Created here, not in build: forward_masked does not go through __call__.
      self.cls_token = self.add_weight(
          name="cls_token",
          shape=[1, 1, cfg.embed_dim],
          initializer=tf.keras.initializers.RandomNormal(stddev=0.02),
      )
    self.blocks = [
        Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, name=f"block_{i}")
        for i in range(cfg.depth)
    ]
    self.norm = LayerNorm(name="norm")

  def _embed(self, imgs):  # -> [B, L, D]; L = (H/p)^2, fewer for a smaller view
    x = self.patch_embed(patchify(imgs, self.cfg.patch_size))
    grid = imgs.shape[1] // self.cfg.patch_size
    full = self.cfg.image_size // self.cfg.patch_size
    pos = self.pos_embed if grid == full else sincos_pos_embed(self.cfg.embed_dim, grid, full)[None]
    return x + tf.cast(pos, x.dtype)

  def _prepend_cls(self, x):  # [B, N, D] -> [B, T, D]
    if not self.cfg.cls_token:
      return x
    cls = tf.tile(tf.cast(self.cls_token, x.dtype), [tf.shape(x)[0], 1, 1])
    return tf.concat([cls, x], axis=1)

  def _blocks(self, x, last_blocks: int = 1):
    """Runs every block; returns the final-norm'ed tokens of the last block
    [B, T, D], or those of the last `last_blocks` blocks side by side
    [B, T, last_blocks * D] (earliest first)."""
    if not 1 <= last_blocks <= len(self.blocks):
      raise ValueError(f"last_blocks must be in [1, {len(self.blocks)}], got {last_blocks}")
    outputs = []
    for i, blk in enumerate(self.blocks):
      x = blk(x)
      if i >= len(self.blocks) - last_blocks:
        outputs.append(self.norm(x))
    return outputs[0] if last_blocks == 1 else tf.concat(outputs, axis=-1)

  def call(self, imgs, last_blocks: int = 1):
    """[B, H, W, C] -> [B, T, D] tokens of every patch (no masking);
    last_blocks > 1: [B, T, last_blocks * D], a probe feature option."""
    return self._blocks(self._prepend_cls(self._embed(imgs)), last_blocks)

  def embed(self, imgs, last_blocks: Optional[int] = 1) -> tf.Tensor:
    """[B, H, W, C] -> [B, last_blocks * D] float32: the [CLS] output or the
    mean over the patch tokens, of each of the last `last_blocks` blocks
    (None: all), side by side. The probe and serving use it."""
    tokens = self(imgs, last_blocks=last_blocks or len(self.blocks))
    return pool_tokens(tokens, self.cfg.num_prefix_tokens)

  def forward_masked(self, imgs, mask_ratio: float, noise=None, last_blocks: int = 1):
    """-> latent [B, T_keep, D] (last_blocks > 1: [B, T_keep, last_blocks * D],
    earliest first), mask [B, L], ids_restore [B, L]."""
    x, mask, ids_restore = random_masking(self._embed(imgs), mask_ratio, noise)
    return self._blocks(self._prepend_cls(x), last_blocks), mask, ids_restore


class Decoder(tf.keras.layers.Layer):
  """Lightweight decoder with mask tokens and a per-token linear head."""

  def __init__(self, cfg: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    self.cfg = cfg
    grid = cfg.image_size // cfg.patch_size
    self.pos_embed = tf.constant(sincos_pos_embed(cfg.decoder_embed_dim, grid)[None])
    self.embed = tf.keras.layers.Dense(cfg.decoder_embed_dim, name="embed")
    self.blocks = [
        Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, name=f"block_{i}")
        for i in range(cfg.decoder_depth)
    ]
    self.norm = LayerNorm(name="norm")
    self.pred = tf.keras.layers.Dense(cfg.patch_size**2 * 3, name="pred")

  def build(self, input_shape):
    """Creates the learned mask token, [1, 1, Dd]."""
    self.mask_token = self.add_weight(
        name="mask_token",
        shape=[1, 1, self.cfg.decoder_embed_dim],
        initializer=tf.keras.initializers.RandomNormal(stddev=0.02),
    )
    super().build(input_shape)

  def call(self, latent, ids_restore):
    """Latent [B, T_keep, D], ids_restore [B, L] -> pred [B, L, P]."""
    prefix = self.cfg.num_prefix_tokens  # the [CLS] token, if any
    x = self.embed(latent)  # [B, T_keep, Dd]
    if prefix:
      cls, x = tf.split(x, [prefix, x.shape[1] - prefix], axis=1)
    b, length = tf.shape(x)[0], ids_restore.shape[1]
    mask_tokens = tf.tile(tf.cast(self.mask_token, x.dtype), [b, length - x.shape[1], 1])
    x = tf.concat([x, mask_tokens], axis=1)  # [B, L, Dd] shuffled
    x = tf.gather(x, ids_restore, batch_dims=1)  # unshuffle
    x = x + tf.cast(self.pos_embed, x.dtype)
    if prefix:
      x = tf.concat([cls, x], axis=1)  # [B, 1 + L, Dd]
    for blk in self.blocks:
      x = blk(x)
    pred = self.pred(self.norm(x))  # [B, T, P]
    return pred[:, prefix:] if prefix else pred  # [B, L, P]


def masked_patch_loss(imgs, pred, mask, patch_size: int, norm_pix_loss: bool) -> tf.Tensor:
  """Mean squared error over masked patches only (float32)."""
  target = patchify(tf.cast(imgs, tf.float32), patch_size)  # [B, L, P]
  if norm_pix_loss:
    mean, var = tf.nn.moments(target, axes=[-1], keepdims=True)
    target = (target - mean) / tf.sqrt(var + 1e-6)
  per_patch = tf.reduce_mean(tf.square(tf.cast(pred, tf.float32) - target), axis=-1)  # [B, L]
  return tf.reduce_sum(per_patch * mask) / tf.reduce_sum(mask)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------
class MaskedAutoencoder(tf.keras.Model):
  """MAE: `call(imgs)` -> (loss, pred, mask); `embed(imgs)` -> embeddings.

  The model only: how it is trained (optimizer, precision, distribution, XLA)
  is `models.engine_pretrain`; the joint-embedding terms beside the
  reconstruction (views, contrastive, variance-covariance) are
  `models.joint_embedding`, and `models.joint_embedding.build_mae` picks
  the class a config needs.
  """

  def __init__(self, cfg: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    self.cfg = cfg
    self.encoder = Encoder(cfg, name="encoder")
    self.decoder = Decoder(cfg, name="decoder")

  def forward_encoder(self, imgs, noise=None, last_blocks: int = 1):
    """Imgs [B, H, W, C] -> latent [B, T_keep, last_blocks * D], mask [B, L],
    ids_restore [B, L]."""
    return self.encoder.forward_masked(imgs, self.cfg.mask_ratio, noise, last_blocks)

  def forward_decoder(self, latent, ids_restore):
    """Latent [B, T_keep, D], ids_restore [B, L] -> pred [B, L, P]."""
    return self.decoder(latent, ids_restore)

  def forward_loss(self, imgs, pred, mask):
    """The masked patches' mean squared error, () float32."""
    return masked_patch_loss(imgs, pred, mask, self.cfg.patch_size, self.cfg.norm_pix_loss)

  def call(self, imgs, training=False, noise=None):
    """Imgs [B, H, W, C], noise [B, L] or None -> (loss, pred [B, L, P],
    mask [B, L])."""
    latent, mask, ids_restore = self.forward_encoder(imgs, noise)
    pred = self.forward_decoder(latent, ids_restore)
    return self.forward_loss(imgs, pred, mask), pred, mask

  def embed(self, imgs) -> tf.Tensor:
    """[B, H, W, C] -> [B, D] float32 (see `Encoder.embed`)."""
    return self.encoder.embed(imgs)

  def dummy_batch(self, batch: int = 2):
    """Zeros shaped like a training batch, for `build_for`."""
    c = self.cfg
    return tf.zeros([batch, c.image_size, c.image_size, 3])

  def build_for(self, batch: int = 2):
    """Creates every variable by running a dummy batch."""
    self(self.dummy_batch(batch))
    return self
