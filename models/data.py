"""Input pipelines shared by the pretraining and probe engines.

Raw tf.Examples are parsed and pushed through the Transform graph. The probe
streams them (`transformed_batches`: each image is embedded once); MAE
pretraining keeps them in memory (`load_transformed`; CIFAR-10 train is 600
MB as float32) and serves shuffled batches, augmented (random-resized-crop +
flip) vectorised over the batch with a different crop per image.
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


def transformed_batches(file_patterns: List[str],
                        tf_transform_output: tft.TFTransformOutput,
                        max_examples: Optional[int] = None,
                        batch_size: int = _READ_BATCH) -> tf.data.Dataset:
  """Gzipped tf.Example files through the Transform graph, lazily, in file
  order: batches of (images [B, S, S, 3] float32 normalised, labels [B] int64).
  """
  feature_spec = tf_transform_output.raw_feature_spec()
  tft_layer = tf_transform_output.transform_features_layer()

  @tf.function
  def transform(serialized):
    transformed = tft_layer(tf.io.parse_example(serialized, feature_spec))
    return transformed[IMAGE_KEY], tf.cast(transformed[LABEL_KEY], tf.int64)

  return (serialized_examples(file_patterns, max_examples)
          .batch(batch_size)
          .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(2))


def load_transformed(file_patterns: List[str],
                     tf_transform_output: tft.TFTransformOutput,
                     max_examples: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """`transformed_batches` held in memory: images [N, S, S, 3] float32
  (normalised), labels [N] int64."""
  images, labels = [], []
  for img, lab in transformed_batches(file_patterns, tf_transform_output, max_examples):
    images.append(img.numpy())
    labels.append(lab.numpy())
  if not images:
    raise ValueError(f"No examples in {file_patterns}")
  images, labels = np.concatenate(images), np.concatenate(labels)
  logging.info("Loaded %d transformed examples from %s", len(labels),
               file_patterns)
  return images, labels


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
