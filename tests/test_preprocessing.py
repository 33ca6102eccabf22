"""preprocessing_fn through real tf.Transform on real CIFAR-10 PNGs."""

import numpy as np
import tensorflow as tf

from models.preprocessing import decode_images
from tests.conftest import jpeg_bytes, png_bytes, raw_feature_spec


def _transform(transform_output, pngs):
  layer = transform_output.transform_features_layer()
  return layer({"image": tf.constant([[p] for p in pngs])})["image"].numpy()


def test_schema_gives_the_expected_raw_feature_spec():
  spec = raw_feature_spec()
  assert spec["image"] == tf.io.FixedLenFeature([1], tf.string)
  assert spec["label"] == tf.io.FixedLenFeature([1], tf.int64)


def test_channel_stats_come_from_the_training_data(transform_output, cifar10_sample):
  (images, _), _ = cifar10_sample
  analysed = images[:64].astype(np.float64) / 255.0  # what the fixture analysed
  mean, std = analysed.mean((0, 1, 2)), analysed.std((0, 1, 2))
  out = _transform(transform_output, [png_bytes(i) for i in images[:64]])
  assert out.shape == (64, 32, 32, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, (analysed - mean) / std, atol=1e-4)
  np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(out.std((0, 1, 2)), 1, atol=1e-4)


def test_jpeg_and_other_sizes_decode_to_the_model_input(cifar10_sample):
  (images, _), _ = cifar10_sample
  img = images[0]
  png, jpeg = png_bytes(img), jpeg_bytes(img)
  big_wide = jpeg_bytes(np.kron(img, np.ones((2, 3, 1), np.uint8)))  # 64x96
  out = decode_images(tf.constant([png, jpeg, big_wide])).numpy()
  assert out.shape == (3, 32, 32, 3)
  np.testing.assert_allclose(out[0] * 255.0, img, atol=1e-4)  # PNG lossless
  assert np.abs(out[1] - img / 255.0).mean() < 0.03  # JPEG close
  assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
