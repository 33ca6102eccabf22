"""Joint-embedding terms beside the MAE's reconstruction (`models/mae.py`).

`JointEmbeddingMAE` is the MAE plus what ties augmented views of one image
together, each term on its own `ModelConfig` switch:

  contrastive_weight        InfoNCE between the two global views' pooled
                            visible tokens through a projector (CAN, Mishra
                            et al. 2022); with `teacher_momentum` against a
                            momentum teacher's keys (MoCo v3).
  local views               (`pretrain.local_views`) small crops fed at their
                            own size (16 x 16 at patch 4: 16 tokens), each
                            pulled toward its image's global views (SwAV /
                            DINO multi-crop, FastSiam's several targets).
  variance_covariance_weight  VICReg's variance and covariance terms on every
                            view's projections: each dimension keeps a spread
                            across the batch, and dimensions decorrelate.
  uniformity_weight         U-MAE's regulariser on the pooled tokens.

`build_mae(cfg)` builds the class a config needs: the plain MAE when no term
is on. The attribute names (`projector`, `teacher`, `teacher_projector`,
`predictor`) are what saved MAEs' checkpoints track.

Shapes: B images, V local views, P projection width.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from models.config import ModelConfig
from models.mae import Encoder, MaskedAutoencoder, pool_tokens

# VICReg's covariance coefficient over its variance coefficient (nu / mu =
# 1 / 25, Bardes et al. 2022), and the variance term's target std.
COVARIANCE_SHARE = 1.0 / 25.0
TARGET_STD = 1.0


# --------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------
def merge_views(x: tf.Tensor) -> tf.Tensor:
  """[B, V, ...] -> [V*B, ...], view-major: image i's views at i, B + i, ..."""
  return tf.concat(tf.unstack(x, axis=1), axis=0)


# --------------------------------------------------------------------------
# Loss terms (float32)
# --------------------------------------------------------------------------
def uniformity_loss(latent: tf.Tensor, tau: float, prefix_tokens: int = 0) -> tf.Tensor:
  """U-MAE's regulariser: mean over the batch's pairs of (cos sim / tau)^2 of
  the pooled visible tokens (the [CLS] token when there is one). [B, T, D] -> ()."""
  z = tf.math.l2_normalize(pool_tokens(latent, prefix_tokens), axis=-1)  # [B, D]
  sim = tf.matmul(z, z, transpose_b=True) / tau  # [B, B]
  return tf.reduce_mean(tf.square(sim))


def contrastive_loss(z: tf.Tensor, tau: float) -> tf.Tensor:
  """InfoNCE (SimCLR's NT-Xent) over 2B projections, view-major: row i's
  positive is row (i + B) mod 2B, the other 2B - 2 rows are its negatives.
  [2B, P] -> () float32."""
  z = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)
  n = tf.shape(z)[0]
  logits = tf.matmul(z, z, transpose_b=True) / tau  # [2B, 2B]
  logits -= 1e9 * tf.eye(n)  # not itself
  positives = (tf.range(n) + n // 2) % n
  return tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=logits)
  )


def _cross_entropy_to_keys(queries: tf.Tensor, keys: tf.Tensor, tau: float) -> tf.Tensor:
  """Mean InfoNCE of queries [M*B, P] (view-major) against keys [B, P]:
  query j's positive is key j mod B. Both already L2-normalised."""
  b = tf.shape(keys)[0]
  labels = tf.range(tf.shape(queries)[0]) % b
  logits = tf.matmul(queries, keys, transpose_b=True) / tau  # [M*B, B]
  return tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  )


def momentum_contrastive_loss(q: tf.Tensor, k: tf.Tensor, tau: float) -> tf.Tensor:
  """MoCo v3's InfoNCE of 2B student predictions against 2B teacher keys,
  view-major: query i's positive is the key of the other view of its image,
  the other images' keys of that view are its negatives. The keys carry no
  gradient. [2B, P], [2B, P] -> () float32."""
  q = tf.math.l2_normalize(tf.cast(q, tf.float32), axis=-1)
  k = tf.math.l2_normalize(tf.cast(tf.stop_gradient(k), tf.float32), axis=-1)
  q1, q2 = tf.split(q, 2)
  k1, k2 = tf.split(k, 2)
  return (_cross_entropy_to_keys(q1, k2, tau) + _cross_entropy_to_keys(q2, k1, tau)) / 2


def local_contrastive_loss(local: tf.Tensor, global_keys: tf.Tensor, tau: float) -> tf.Tensor:
  """Multi-crop InfoNCE: V local views' projections [V*B, P] (view-major)
  against the 2B global views' keys [2B, P] (view-major, no gradient): a
  local view of image i has image i's key of that global view as positive
  and the other images' keys as negatives; the mean over both global views
  and every local view. -> () float32."""
  q = tf.math.l2_normalize(tf.cast(local, tf.float32), axis=-1)
  k = tf.math.l2_normalize(tf.cast(tf.stop_gradient(global_keys), tf.float32), axis=-1)
  k1, k2 = tf.split(k, 2)
  return (_cross_entropy_to_keys(q, k1, tau) + _cross_entropy_to_keys(q, k2, tau)) / 2


def variance_covariance_loss(z: tf.Tensor) -> tf.Tensor:
  """VICReg's variance + covariance terms of one view's projections [N, P]:
  mean over dimensions of max(0, 1 - std) (std over the batch), plus
  COVARIANCE_SHARE x the sum of squared off-diagonal covariances / P.
  -> () float32."""
  z = tf.cast(z, tf.float32)
  z = z - tf.reduce_mean(z, axis=0)
  n, p = tf.cast(tf.shape(z)[0], tf.float32), tf.cast(tf.shape(z)[1], tf.float32)
  std = tf.sqrt(tf.reduce_mean(tf.square(z), axis=0) * n / (n - 1) + 1e-4)
  variance = tf.reduce_mean(tf.nn.relu(TARGET_STD - std))
  cov = tf.matmul(z, z, transpose_a=True) / (n - 1)  # [P, P]
  off_diagonal = cov - tf.linalg.diag(tf.linalg.diag_part(cov))
  covariance = tf.reduce_sum(tf.square(off_diagonal)) / p
  return variance + COVARIANCE_SHARE * covariance


def teacher_momentum(base: float, progress: tf.Tensor) -> tf.Tensor:
  """The EMA momentum at `progress` (0 to 1) of training: `base` rising to 1
  on a half cosine (BYOL, DINO)."""
  progress = tf.clip_by_value(tf.cast(progress, tf.float32), 0.0, 1.0)
  return 1.0 - (1.0 - base) * (tf.cos(np.pi * progress) + 1.0) / 2.0


class Projector(tf.keras.layers.Layer):
  """The contrastive term's MLP head on the pooled embedding (training only);
  also the momentum teacher's predictor."""

  def __init__(self, hidden: int, dim: int, **kwargs):
    super().__init__(**kwargs)
    self.fc1 = tf.keras.layers.Dense(hidden, activation=tf.nn.gelu, name="fc1")
    self.fc2 = tf.keras.layers.Dense(dim, name="fc2")

  def call(self, x):
    """[B, D] -> [B, P]."""
    return self.fc2(self.fc1(x))


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------
class JointEmbeddingMAE(MaskedAutoencoder):
  """The MAE with its joint-embedding terms (module docstring).

  `call(views [B, 2, H, W, C], noise [B, 2, L], local_views [B, V, h, w, C])`
  reconstructs both global views (each masked on its own) and adds the
  terms; one view [B, H, W, C] is the MAE (+ the uniformity term)."""

  def __init__(self, cfg: ModelConfig, **kwargs):
    super().__init__(cfg, **kwargs)
    self.projector = (
        Projector(cfg.projector_hidden, cfg.projector_dim, name="projector")
        if cfg.contrastive_weight
        else None
    )
    # The momentum teacher: copies of the encoder and projector that only
    # `update_teacher` changes, and the student's predictor.
    self.teacher = self.teacher_projector = self.predictor = None
    if cfg.contrastive_weight and cfg.teacher_momentum:
      self.teacher = Encoder(cfg, name="teacher_encoder", trainable=False)
      self.teacher_projector = Projector(
          cfg.projector_hidden, cfg.projector_dim, name="teacher_projector", trainable=False
      )
      self.predictor = Projector(cfg.projector_hidden, cfg.projector_dim, name="predictor")

  def call(self, imgs, training=False, noise=None, local_views=None):
    """Imgs [B, H, W, C] or two views [B, 2, H, W, C]; noise [B, L] or
    [B, 2, L] or None; local_views [B, V, h, w, C] or None -> (loss,
    pred [B', L, P], mask [B', L]); B' = 2B for two views."""
    views = imgs.shape.rank == 5
    if views:
      imgs = merge_views(imgs)  # [2B, H, W, C]
      noise = merge_views(noise) if noise is not None else None
    joint = views and self.projector is not None
    blocks = self.cfg.contrastive_blocks if joint else 1
    latent_blocks, mask, ids_restore = self.forward_encoder(imgs, noise, blocks)
    latent = latent_blocks[..., -self.cfg.embed_dim :]  # the last block's tokens
    pred = self.forward_decoder(latent, ids_restore)
    loss = self.forward_loss(imgs, pred, mask)
    if self.cfg.uniformity_weight:
      loss += self.cfg.uniformity_weight * uniformity_loss(
          latent, self.cfg.uniformity_tau, self.cfg.num_prefix_tokens
      )
    if joint:
      loss += self.forward_joint_loss(imgs, noise, latent_blocks, local_views)
    elif local_views is not None:
      raise ValueError("local views need two global views and model.contrastive_weight > 0")
    return loss, pred, mask

  def project(self, latent_blocks) -> tf.Tensor:
    """Tokens [N, T, blocks * D] -> projections [N, P]."""
    return self.projector(pool_tokens(latent_blocks, self.cfg.num_prefix_tokens))

  def forward_local(self, local_views) -> tf.Tensor:
    """Local views [B, V, h, w, C] -> projections [V*B, P] (view-major), of
    every patch token of each view (no masking)."""
    tokens = self.encoder(merge_views(local_views), last_blocks=self.cfg.contrastive_blocks)
    return self.project(tokens)

  def forward_joint_loss(self, imgs, noise, latent_blocks, local_views=None) -> tf.Tensor:
    """The weighted joint-embedding terms of the global views [2B, H, W, C]
    (their masked tokens `latent_blocks`) and the local views, () float32."""
    cfg = self.cfg
    z = self.project(latent_blocks)  # [2B, P]
    if self.teacher is None:
      keys, queries = z, z
      term = contrastive_loss(z, cfg.contrastive_tau)
    else:
      keys, queries = self.teacher_keys(imgs, noise), self.predictor(z)
      term = momentum_contrastive_loss(queries, keys, cfg.contrastive_tau)
    groups = tf.split(z, 2)  # each view's projections, for the VC term
    if local_views is not None:
      local = self.forward_local(local_views)  # [V*B, P]
      local_queries = local if self.predictor is None else self.predictor(local)
      term += local_contrastive_loss(local_queries, keys, cfg.contrastive_tau)
      groups += tf.split(local, local_views.shape[1])
    loss = cfg.contrastive_weight * term
    if cfg.variance_covariance_weight:
      vc = tf.add_n([variance_covariance_loss(g) for g in groups]) / len(groups)
      loss += cfg.variance_covariance_weight * vc
    return loss

  def teacher_keys(self, imgs, noise=None) -> tf.Tensor:
    """The teacher's projections of the views [2B, H, W, C] -> [2B, P],
    without gradient. A masked teacher keeps the patches the student
    dropped first (the reversed noise)."""
    ratio, blocks = self.cfg.teacher_mask_ratio, self.cfg.contrastive_blocks
    if ratio:
      latent, _, _ = self.teacher.forward_masked(
          imgs, ratio, None if noise is None else 1.0 - noise, blocks
      )
    else:
      latent = self.teacher(imgs, last_blocks=blocks)
    keys = self.teacher_projector(pool_tokens(latent, self.cfg.num_prefix_tokens))
    return tf.stop_gradient(keys)

  def teacher_pairs(self):
    """(teacher variable, student variable) pairs, in the same order."""
    return list(
        zip(
            self.teacher.weights + self.teacher_projector.weights,
            self.encoder.weights + self.projector.weights,
        )
    )

  def update_teacher(self, momentum) -> None:
    """Teacher = momentum * teacher + (1 - momentum) * student."""
    for teacher, student in self.teacher_pairs():
      teacher.assign(momentum * teacher + (1.0 - momentum) * tf.cast(student, teacher.dtype))

  def dummy_batch(self, batch: int = 2):
    """Zeros shaped like a training batch: two views when there is a projector."""
    c = self.cfg
    views = [2] if self.projector is not None else []
    return tf.zeros([batch, *views, c.image_size, c.image_size, 3])

  def build_for(self, batch: int = 2):
    """Creates every variable by running a dummy batch; the teacher starts
    as the student."""
    super().build_for(batch)
    if self.teacher is not None:
      self.update_teacher(0.0)
    return self


def has_joint_terms(cfg: ModelConfig) -> bool:
  """Whether `cfg` trains more than the MAE's reconstruction."""
  return bool(cfg.contrastive_weight or cfg.uniformity_weight)


def build_mae(cfg: ModelConfig) -> MaskedAutoencoder:
  """The MAE `cfg` describes, its variables created: a `JointEmbeddingMAE`
  when it has a joint-embedding term, else the plain `MaskedAutoencoder`."""
  cls = JointEmbeddingMAE if has_joint_terms(cfg) else MaskedAutoencoder
  return cls(cfg).build_for()


def teacher_of(model: MaskedAutoencoder) -> Optional[Encoder]:
  """The model's momentum teacher encoder, or None."""
  return getattr(model, "teacher", None)
