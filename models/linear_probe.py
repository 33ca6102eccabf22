"""Linear probe on frozen MAE features (official MAE recipe).

BatchNorm without affine parameters (it only standardises the features with
batch statistics while training, moving statistics at inference) followed by
one Dense layer. The encoder is frozen, so its features are computed once and
the head trains on them; `ProbeClassifier` joins the two for serving/TFMA,
with a k-NN classifier over a bank of training embeddings beside the head.
The embedding it serves is the encoder's pooled tokens, PCA-whitened with
statistics of the training images (`set_whitening`).
"""

from typing import List, Optional

import numpy as np
import tensorflow as tf

from models.evaluation import knn_votes, l2_normalise
from models.mae import Encoder
from models.precision import precision_policy

FEATURE_BN = "feature_bn"


def build_probe_head(feature_dim: int, num_classes: int) -> tf.keras.Model:
  """[B, D] features -> [B, num_classes] logits."""
  features = tf.keras.Input([feature_dim], name="features")
  x = tf.keras.layers.BatchNormalization(center=False, scale=False, epsilon=1e-6, name=FEATURE_BN)(
      features
  )
  logits = tf.keras.layers.Dense(
      num_classes,
      name="classifier",
      kernel_initializer=tf.keras.initializers.TruncatedNormal(stddev=0.01),
  )(x)
  return tf.keras.Model(features, logits, name="linear_probe")


def drop_empty_features(head: tf.keras.Model, dropped: np.ndarray) -> None:
  """Zeroes the classifier's weights of the `dropped` features [D] (train
  variance below `probe.variance_floor` x the largest): the BatchNorm scales
  such a feature by up to 1 / sqrt(epsilon), so whatever noise reaches it (a
  bfloat16 encoder's rounding) would swing the logits."""
  dense = head.get_layer("classifier")
  kernel, bias = dense.get_weights()
  kernel[dropped] = 0.0
  dense.set_weights([kernel, bias])


class ProbeClassifier(tf.Module):
  """Frozen encoder + probe head: images -> embeddings / class probabilities;
  `class_names` (id order) name the head's outputs. After `set_knn_bank`,
  also the k-NN classifier's class probabilities (`knn_probabilities`)."""

  def __init__(
      self,
      encoder: Encoder,
      head: Optional[tf.keras.Model],
      class_names: List[str],
      feature_blocks: Optional[int] = None,
  ):
    super().__init__(name="probe_classifier")
    self.encoder = encoder
    self.head = head
    self.class_names = list(class_names)
    self.feature_blocks = feature_blocks
    self.knn_bank = self.knn_labels = None
    self.knn_k = 0
    self.whitening_mean = self.whitening_matrix = None
    self.duplicate_projection = self.duplicate_threshold = None
    self.encoder_bfloat16: Optional[Encoder] = None

  def add_bfloat16_encoder(self) -> None:
    """A twin of the encoder that computes in bfloat16 (Keras's
    mixed_bfloat16 policy: its float32 copy of the weights is cast per call)
    for `embed(..., precision="bfloat16")`: about twice the throughput on a
    CPU with native bfloat16, slower on one without."""
    cfg = self.encoder.cfg
    with precision_policy("mixed_bfloat16"):
      twin = Encoder(cfg, name="encoder_bfloat16")
      twin(tf.zeros([1, cfg.image_size, cfg.image_size, 3]))  # builds its weights
    twin.set_weights(self.encoder.get_weights())
    self.encoder_bfloat16 = twin

  def set_whitening(self, mean: np.ndarray, matrix: np.ndarray) -> None:
    """Makes the embedding (x - mean) @ matrix, x the encoder's pooled
    tokens (`models.evaluation.fit_whitening`); saved with the model."""
    self.whitening_mean = tf.Variable(
        mean.astype(np.float32), trainable=False, name="whitening_mean"
    )
    self.whitening_matrix = tf.Variable(
        matrix.astype(np.float32), trainable=False, name="whitening_matrix"
    )

  def whiten(self, features: tf.Tensor) -> tf.Tensor:
    """[B, E] pooled tokens -> [B, E] the embedding (unchanged without whitening)."""
    if self.whitening_mean is None:
      return features
    return tf.matmul(features - self.whitening_mean, self.whitening_matrix)

  def set_duplicate_projection(self, projection: np.ndarray, threshold: float) -> None:
    """Near-duplicate search's view of the embedding: vectors embedding @
    projection [E, k] (`models.near_duplicates.fit_projection`), pairs at
    cosine >= threshold; saved with the model, read by `serving.embed`."""
    self.duplicate_projection = tf.Variable(
        projection.astype(np.float32), trainable=False, name="duplicate_projection"
    )
    self.duplicate_threshold = tf.Variable(
        float(threshold), dtype=tf.float32, trainable=False, name="duplicate_threshold"
    )

  def set_knn_bank(self, features: np.ndarray, labels: np.ndarray, k: int) -> None:
    """The k-NN classifier's bank: embeddings [N, E] and their labels [N],
    saved with the model. Stored L2-normalised in float16 (half the size;
    cosine similarities to ~1e-3); `knn_bank` is what the votes use."""
    self.knn_bank = tf.Variable(
        l2_normalise(features.astype(np.float32)).astype(np.float16),
        trainable=False,
        name="knn_bank",
    )
    self.knn_labels = tf.Variable(np.asarray(labels, np.int64), trainable=False, name="knn_labels")
    self.knn_k = min(k, len(labels))

  def knn_probabilities(self, images: tf.Tensor, precision: str = "float32") -> tf.Tensor:
    """[B, H, W, C] -> [B, K] the k nearest bank embeddings' weighted votes
    (the encoder computing in `precision`)."""
    if self.knn_bank is None:
      raise ValueError("ProbeClassifier has no k-NN bank: call set_knn_bank first")
    return knn_votes(
        self.embed(images, precision),
        self.knn_bank,
        self.knn_labels,
        self.knn_k,
        len(self.class_names),
        bank_normalised=True,
    )

  def pooled_tokens(self, images: tf.Tensor, precision: str = "float32") -> tf.Tensor:
    """[B, H, W, C] normalised images -> [B, k * D] float32: the pooled
    tokens of the last k = `feature_blocks` blocks (None: all), side by side
    (`Encoder.embed`), computed in `precision` (float32 or bfloat16)."""
    encoder = self.encoder if precision == "float32" else self.encoder_bfloat16
    if encoder is None:
      raise ValueError(f"no {precision} encoder: call add_bfloat16_encoder first")
    return encoder.embed(images, last_blocks=self.feature_blocks)

  def embed(self, images: tf.Tensor, precision: str = "float32") -> tf.Tensor:
    """[B, H, W, C] normalised images -> [B, k * D] float32 embeddings: the
    pooled tokens, whitened when `set_whitening` was called."""
    return self.whiten(self.pooled_tokens(images, precision))

  def probabilities(self, images: tf.Tensor, precision: str = "float32") -> tf.Tensor:
    """[B, H, W, C] normalised images -> [B, K] float32, the head's class
    probabilities (K = len(class_names)), the encoder computing in `precision`."""
    logits = self.head(self.embed(images, precision), training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
