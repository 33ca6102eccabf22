"""MAE pretraining's input: the train split held in memory when it fits the
memory budget, streamed from the example files otherwise."""

import numpy as np
import pytest
import tensorflow as tf

from models import config as config_lib
from models import data
from models.engine_pretrain import pretrain


def _sorted_rows(images):
  flat = np.asarray(images).reshape(len(images), -1)
  return flat[np.lexsort(flat.T[::-1])]


def test_a_streamed_epoch_is_a_permutation_of_the_split(example_files, transform_output):
  train_files, _ = example_files
  stream = data.streamed_pretrain_dataset(
      train_files, transform_output, batch_size=32, augment=None, shuffle_buffer=100, seed=1
  )
  epoch = np.concatenate([b.numpy() for b in stream.take(320 // 32)])
  in_memory, _ = data.load_transformed(train_files, transform_output)
  assert epoch.shape == in_memory.shape == (320, 32, 32, 3)
  assert not np.allclose(epoch, in_memory)  # shuffled ...
  np.testing.assert_allclose(
      _sorted_rows(epoch), _sorted_rows(in_memory), rtol=1e-6, atol=1e-6
  )  # ... each image once
  augmented = next(
      iter(
          data.streamed_pretrain_dataset(
              train_files,
              transform_output,
              batch_size=32,
              augment=data.Augmentation(),
              shuffle_buffer=100,
          )
      )
  )
  assert augmented.shape == (32, 32, 32, 3) and np.isfinite(augmented.numpy()).all()
  two_views = next(
      iter(
          data.streamed_pretrain_dataset(
              train_files,
              transform_output,
              batch_size=32,
              augment=data.Augmentation(color_jitter=0.4, views=2),
              shuffle_buffer=100,
          )
      )
  )
  assert two_views.shape == (32, 2, 32, 32, 3)
  assert not np.allclose(two_views[:, 0], two_views[:, 1])  # two different views


def test_the_memory_budget_picks_the_path(example_files, transform_output, capsys):
  train_files, _ = example_files
  streamed = data.training_images(
      train_files, transform_output, memory_budget_mb=1, shuffle_buffer=100
  )
  assert streamed.streamed and streamed.count == 320 and streamed.images is None
  assert (
      "320 training images (4 MB as float32, memory budget 1 MB): streamed"
      in capsys.readouterr().err
  )
  held = data.training_images(
      train_files, transform_output, memory_budget_mb=64, shuffle_buffer=100, max_examples=200
  )
  assert not held.streamed and held.count == 200
  assert (
      "200 training images (2 MB as float32, memory budget 64 MB): held in memory"
      in capsys.readouterr().err
  )
  np.testing.assert_array_equal(
      held.images, data.load_transformed(train_files, transform_output, 200)[0]
  )


def test_pretraining_streams_the_examples(example_files, transform_output, tmp_path):
  train_files, _ = example_files
  cfg = config_lib.get_profile("smoke", {"pretrain": {"epochs": 3}})
  images = data.training_images(
      train_files, transform_output, memory_budget_mb=0, shuffle_buffer=cfg.data.shuffle_buffer
  )
  model, history = pretrain(cfg, images, str(tmp_path / "logs"), str(tmp_path / "ckpt"))
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert int(model.optimizer.iterations.numpy()) == 3 * (320 // 32)
  losses = [h["loss"] for h in history]
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert tf.io.gfile.glob(str(tmp_path / "ckpt" / "ckpt-3*"))


def test_in_memory_batches_are_a_function_of_seed_and_step():
  """A run resumed at step k sees the batches an uninterrupted run saw."""
  images = np.random.RandomState(0).randn(40, 8, 8, 3).astype(np.float32)
  augment = data.Augmentation(color_jitter=0.4, views=2)
  whole = [b.numpy() for b in data.pretrain_dataset(images, 8, augment, seed=3).take(12)]
  resumed = [
      b.numpy() for b in data.pretrain_dataset(images, 8, augment, seed=3, first_step=7).take(5)
  ]
  for a, b in zip(whole[7:], resumed):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(whole[0], whole[5])  # epoch 2 is another permutation
  other = next(iter(data.pretrain_dataset(images, 8, augment, seed=4))).numpy()
  assert not np.allclose(whole[0], other)


def test_color_jitter_changes_colour_not_layout():
  tf.random.set_seed(0)
  images = tf.random.normal([64, 8, 8, 3])
  jittered = data.color_jitter(images, 0.4, tf.constant([0, 1]), apply_prob=1.0, grayscale_prob=0.0)
  assert jittered.shape == images.shape and np.isfinite(jittered.numpy()).all()
  assert not np.allclose(jittered, images)
  # An affine change of each image's colours: the spatial pattern is kept.
  a, b = images.numpy().reshape(64, -1), jittered.numpy().reshape(64, -1)
  correlation = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
  assert min(correlation) > 0.5
  gray = data.color_jitter(
      images, 0.4, tf.constant([0, 2]), apply_prob=0.0, grayscale_prob=1.0
  ).numpy()
  np.testing.assert_allclose(gray[..., 0], gray[..., 2])
  np.testing.assert_allclose(gray[..., 0], images.numpy().mean(-1), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="views must be 1 or 2, got 3"):
    data.Augmentation(views=3)


def test_hue_jitter_turns_colours_about_grey_and_keeps_grey_and_brightness():
  rotation = data.hue_rotation(tf.constant([0.0, 1 / 3, 0.1])).numpy()
  np.testing.assert_allclose(rotation[0], np.eye(3), atol=1e-6)
  np.testing.assert_allclose(
      rotation[1] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6
  )  # red -> green
  for r in rotation:  # a rotation that keeps grey
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(r @ np.ones(3), np.ones(3), atol=1e-6)
  tf.random.set_seed(0)
  images = tf.random.normal([64, 8, 8, 3])
  seed = tf.constant([0, 1])
  plain = data.color_jitter(images, 0.4, seed, apply_prob=1.0, grayscale_prob=0.0)
  hued = data.color_jitter(images, 0.4, seed, apply_prob=1.0, grayscale_prob=0.0, hue=0.1)
  assert not np.allclose(plain, hued)
  # Only the colours turn: each pixel's grey level is the same with and without.
  np.testing.assert_allclose(plain.numpy().mean(-1), hued.numpy().mean(-1), atol=1e-5)
  augment = data.Augmentation(color_jitter=0.4, views=2, hue_jitter=0.1)
  assert augment(images, seed).shape == (64, 2, 8, 8, 3)
