"""Input pipelines shared by the pretraining and probe engines.

Raw tf.Examples are parsed and pushed through the Transform graph once, kept
in memory (CIFAR-10 train is 600 MB as float32), then served in shuffled
batches. Augmentation (random-resized-crop + flip) is vectorised over the
batch with a different crop per image.
"""

import logging
import math
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models.config import IMAGE_SIZE
from models.examples import serialized_examples
from models.names import IMAGE_KEY, LABEL_KEY
from models.preprocessing import decode_images

_READ_BATCH = 1024


def load_transformed(file_patterns: List[str],
                     tf_transform_output: tft.TFTransformOutput,
                     max_examples: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Reads gzipped tf.Example files through the Transform graph.

  Returns:
    images [N, S, S, 3] float32 (normalised), labels [N] int64.
  """
  feature_spec = tf_transform_output.raw_feature_spec()
  tft_layer = tf_transform_output.transform_features_layer()
  ds = serialized_examples(file_patterns, max_examples)

  @tf.function
  def transform(serialized):
    transformed = tft_layer(tf.io.parse_example(serialized, feature_spec))
    return transformed[IMAGE_KEY], transformed[LABEL_KEY]

  ds = ds.batch(_READ_BATCH).map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = [], []
  for img, lab in ds.prefetch(2):
    images.append(img.numpy())
    labels.append(lab.numpy())
  if not images:
    raise ValueError(f"No examples in {file_patterns}")
  images, labels = np.concatenate(images), np.concatenate(labels)
  logging.info("Loaded %d transformed examples from %s", len(labels),
               file_patterns)
  return images, labels.astype(np.int64)


def load_raw_images(file_patterns: List[str], feature_spec, count: int) -> np.ndarray:
  """The first `count` images decoded to [count, S, S, 3] float32 in [0, 1]
  (what the Transform graph starts from), for pictures."""
  serialized = tf.stack(list(serialized_examples(file_patterns, count)))
  return decode_images(tf.io.parse_example(serialized, feature_spec)[IMAGE_KEY]).numpy()


def random_resized_crop(images: tf.Tensor, min_scale: float,
                        ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
  """Per-image RandomResizedCrop (area in [min_scale, 1]) + horizontal flip.

  [B, S, S, C] -> [B, S, S, C]; boxes are sampled in normalised coordinates.
  """
  b = tf.shape(images)[0]
  area = tf.random.uniform([b], min_scale, 1.0)
  log_ratio = tf.random.uniform([b], math.log(ratio[0]), math.log(ratio[1]))
  aspect = tf.exp(log_ratio)
  w = tf.minimum(tf.sqrt(area * aspect), 1.0)
  h = tf.minimum(tf.sqrt(area / aspect), 1.0)
  y0 = tf.random.uniform([b]) * (1.0 - h)
  x0 = tf.random.uniform([b]) * (1.0 - w)
  boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)   # [B, 4]
  crops = tf.image.crop_and_resize(images, boxes, tf.range(b),
                                   [IMAGE_SIZE, IMAGE_SIZE])
  flip = tf.random.uniform([b, 1, 1, 1]) < 0.5
  return tf.where(flip, tf.reverse(crops, axis=[2]), crops)


def pretrain_dataset(images: np.ndarray, batch_size: int, min_scale: float,
                     seed: int = 0) -> tf.data.Dataset:
  """Endless shuffled, augmented batches of images (no labels)."""
  n = len(images)
  if n < batch_size:
    raise ValueError(f"Batch size {batch_size} is larger than the "
                     f"{n} training examples")
  pool = tf.constant(images)
  return (tf.data.Dataset.range(n)
          .shuffle(n, seed=seed, reshuffle_each_iteration=True)
          .repeat()
          .batch(batch_size, drop_remainder=True)
          .map(lambda idx: random_resized_crop(tf.gather(pool, idx), min_scale),
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


def batched(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
  """Images in order, for inference."""
  return tf.data.Dataset.from_tensor_slices(images).batch(batch_size).prefetch(2)
