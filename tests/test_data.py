"""MAE pretraining's input: the train split held in memory when it fits the
memory budget, streamed from the example files otherwise."""

import numpy as np
import tensorflow as tf

from models import config as config_lib
from models import data
from models.engine_pretrain import pretrain


def _sorted_rows(images):
  flat = np.asarray(images).reshape(len(images), -1)
  return flat[np.lexsort(flat.T[::-1])]


def test_a_streamed_epoch_is_a_permutation_of_the_split(example_files, transform_output):
  train_files, _ = example_files
  stream = data.streamed_pretrain_dataset(train_files, transform_output, batch_size=32,
                                          min_scale=0.2, shuffle_buffer=100, seed=1,
                                          augment=False)
  epoch = np.concatenate([b.numpy() for b in stream.take(320 // 32)])
  in_memory, _ = data.load_transformed(train_files, transform_output)
  assert epoch.shape == in_memory.shape == (320, 32, 32, 3)
  assert not np.allclose(epoch, in_memory)                       # shuffled ...
  np.testing.assert_allclose(_sorted_rows(epoch), _sorted_rows(in_memory),
                             rtol=1e-6, atol=1e-6)               # ... each image once
  augmented = next(iter(data.streamed_pretrain_dataset(
      train_files, transform_output, batch_size=32, min_scale=0.2, shuffle_buffer=100)))
  assert augmented.shape == (32, 32, 32, 3) and np.isfinite(augmented.numpy()).all()


def test_the_memory_budget_picks_the_path(example_files, transform_output, capsys):
  train_files, _ = example_files
  streamed = data.training_images(train_files, transform_output, memory_budget_mb=1,
                                  shuffle_buffer=100)
  assert streamed.streamed and streamed.count == 320 and streamed.images is None
  assert "320 training images (4 MB as float32, memory budget 1 MB): streamed" \
      in capsys.readouterr().out
  held = data.training_images(train_files, transform_output, memory_budget_mb=64,
                              shuffle_buffer=100, max_examples=200)
  assert not held.streamed and held.count == 200
  assert "200 training images (2 MB as float32, memory budget 64 MB): held in memory" \
      in capsys.readouterr().out
  np.testing.assert_array_equal(
      held.images, data.load_transformed(train_files, transform_output, 200)[0])


def test_pretraining_streams_the_examples(example_files, transform_output, tmp_path):
  train_files, _ = example_files
  cfg = config_lib.get_profile("smoke", {"pretrain": {"epochs": 3}})
  images = data.training_images(train_files, transform_output, memory_budget_mb=0,
                                shuffle_buffer=cfg.data.shuffle_buffer)
  model, history = pretrain(cfg, images, str(tmp_path / "logs"), str(tmp_path / "ckpt"))
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert int(model.optimizer.iterations.numpy()) == 3 * (320 // 32)
  losses = [h["loss"] for h in history]
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert tf.io.gfile.glob(str(tmp_path / "ckpt" / "ckpt-3*"))
