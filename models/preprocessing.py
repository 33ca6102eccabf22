"""Transform's preprocessing_fn: image bytes -> normalised float32 images.

The same graph runs at training (Trainers apply it through the Transform
layer), evaluation (TFMA calls the exported signatures) and serving, so a
model never sees differently prepared pixels.

Any image TensorFlow can decode (PNG, JPEG, BMP, GIF first frame) is
accepted. Images that are not IMAGE_SIZE x IMAGE_SIZE are centre-cropped to a
square on their shorter side, then resized with area averaging (anti-aliased)
to IMAGE_SIZE x IMAGE_SIZE; CIFAR-10 images pass through unchanged.
"""

import tensorflow as tf
import tensorflow_transform as tft

from models.config import IMAGE_CHANNELS, IMAGE_SIZE
from models.names import IMAGE_KEY, LABEL_KEY


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """One encoded image (scalar string) -> [S, S, 3] float32 in [0, 1]."""
  img = tf.io.decode_image(image_bytes, channels=IMAGE_CHANNELS,
                           expand_animations=False)
  h, w = tf.shape(img)[0], tf.shape(img)[1]

  def square_resize():
    side = tf.minimum(h, w)
    crop = tf.image.crop_to_bounding_box(img, (h - side) // 2, (w - side) // 2,
                                         side, side)
    return tf.image.resize(crop, [IMAGE_SIZE, IMAGE_SIZE], method="area")

  same_size = tf.logical_and(tf.equal(h, IMAGE_SIZE), tf.equal(w, IMAGE_SIZE))
  img = tf.cond(same_size, lambda: tf.cast(img, tf.float32), square_resize)
  img = tf.reshape(img, [IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS])
  return img / 255.0


def decode_images(image_bytes: tf.Tensor) -> tf.Tensor:
  """[B] or [B, 1] encoded images -> [B, S, S, 3] float32 in [0, 1]."""
  image_bytes = tf.reshape(image_bytes, [-1])
  return tf.map_fn(
      decode_image, image_bytes,
      fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS],
                                        tf.float32))


def preprocessing_fn(inputs):
  """tf.Transform callback: decode, then per-channel standardisation.

  The channel mean and std are analysers over the training split, so they
  come from the data and are frozen into the transform graph.
  """
  images = decode_images(inputs[IMAGE_KEY])             # [B, S, S, 3]
  pixels = tf.reshape(images, [-1, IMAGE_CHANNELS])     # [B*S*S, 3]
  mean = tft.mean(pixels, reduce_instance_dims=False)   # [3]
  var = tft.var(pixels, reduce_instance_dims=False)     # [3]
  outputs = {IMAGE_KEY: (images - mean) / tf.sqrt(var + 1e-12)}
  if LABEL_KEY in inputs:
    outputs[LABEL_KEY] = tf.reshape(inputs[LABEL_KEY], [-1])
  return outputs
