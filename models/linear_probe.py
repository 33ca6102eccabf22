"""Linear probe on frozen MAE features (official MAE recipe).

BatchNorm without affine parameters (it only standardises the features with
batch statistics while training, moving statistics at inference) followed by
one Dense layer. The encoder is frozen, so its features are computed once and
the head trains on them; `ProbeClassifier` joins the two for serving/TFMA.
"""

from typing import List, Optional

import tensorflow as tf

from models.mae import Encoder


FEATURE_BN = "feature_bn"


def build_probe_head(feature_dim: int, num_classes: int) -> tf.keras.Model:
  """[B, D] features -> [B, num_classes] logits."""
  features = tf.keras.Input([feature_dim], name="features")
  x = tf.keras.layers.BatchNormalization(center=False, scale=False,
                                         epsilon=1e-6, name=FEATURE_BN)(features)
  logits = tf.keras.layers.Dense(
      num_classes, name="classifier",
      kernel_initializer=tf.keras.initializers.TruncatedNormal(stddev=0.01))(x)
  return tf.keras.Model(features, logits, name="linear_probe")


class ProbeClassifier(tf.Module):
  """Frozen encoder + probe head: images -> embeddings / class probabilities;
  `class_names` (id order) name the head's outputs."""

  def __init__(self, encoder: Encoder, head: Optional[tf.keras.Model],
               class_names: List[str], feature_blocks: int = 1):
    super().__init__(name="probe_classifier")
    self.encoder = encoder
    self.head = head
    self.class_names = list(class_names)
    self.feature_blocks = feature_blocks

  def embed(self, images: tf.Tensor) -> tf.Tensor:
    """[B, H, W, C] normalised images -> [B, D] float32 embeddings of the last
    `feature_blocks` blocks' (averaged) tokens (see `Encoder.embed`)."""
    return self.encoder.embed(images, last_blocks=self.feature_blocks)

  def probabilities(self, images: tf.Tensor) -> tf.Tensor:
    logits = self.head(self.embed(images), training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
