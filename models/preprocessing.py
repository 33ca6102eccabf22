"""Transform's preprocessing_fn: image bytes -> normalised float32 images.

The same graph runs at training (Trainers apply it through the Transform
layer), evaluation (TFMA calls the exported signatures) and serving, so a
model never sees differently prepared pixels.

Any image TensorFlow can decode (PNG, JPEG, BMP, GIF first frame) is
accepted. Images that are not S x S (`data.image_size`, passed in Transform's
custom_config; 32 by default) are centre-cropped to a square on their shorter
side, then resized with area averaging (anti-aliased) to S x S; at S = 32
CIFAR-10 images pass through unchanged.
"""

import tensorflow as tf
import tensorflow_transform as tft

from models.config import IMAGE_CHANNELS, IMAGE_SIZE
from models.names import IMAGE_KEY, IMAGE_SIZE_CONFIG_KEY, LABEL_KEY


def decode_image(image_bytes: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
  """One encoded image (scalar string) -> [size, size, 3] float32 in [0, 1]."""
  img = tf.io.decode_image(image_bytes, channels=IMAGE_CHANNELS, expand_animations=False)
  h, w = tf.shape(img)[0], tf.shape(img)[1]

  def square_resize():
    side = tf.minimum(h, w)
    crop = tf.image.crop_to_bounding_box(img, (h - side) // 2, (w - side) // 2, side, side)
    return tf.image.resize(crop, [size, size], method="area")

  same_size = tf.logical_and(tf.equal(h, size), tf.equal(w, size))
  img = tf.cond(same_size, lambda: tf.cast(img, tf.float32), square_resize)
  img = tf.reshape(img, [size, size, IMAGE_CHANNELS])
  return img / 255.0


def decode_images(image_bytes: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
  """[B] or [B, 1] encoded images -> [B, size, size, 3] float32 in [0, 1]."""
  image_bytes = tf.reshape(image_bytes, [-1])
  return tf.map_fn(
      lambda one: decode_image(one, size),
      image_bytes,
      fn_output_signature=tf.TensorSpec([size, size, IMAGE_CHANNELS], tf.float32),
  )


def preprocessing_fn(inputs, custom_config=None):
  """tf.Transform callback: decode to S x S, then per-channel standardisation.

  S is custom_config["image_size"] (`data.image_size`; 32 without one). The
  channel mean and std are analysers over the training split, so they come
  from the data and are frozen into the transform graph.
  """
  size = int((custom_config or {}).get(IMAGE_SIZE_CONFIG_KEY, IMAGE_SIZE))
  images = decode_images(inputs[IMAGE_KEY], size)  # [B, S, S, 3]
  pixels = tf.reshape(images, [-1, IMAGE_CHANNELS])  # [B*S*S, 3]
  mean = tft.mean(pixels, reduce_instance_dims=False)  # [3]
  var = tft.var(pixels, reduce_instance_dims=False)  # [3]
  outputs = {IMAGE_KEY: (images - mean) / tf.sqrt(var + 1e-12)}
  if LABEL_KEY in inputs:
    outputs[LABEL_KEY] = tf.reshape(inputs[LABEL_KEY], [-1])
  return outputs
