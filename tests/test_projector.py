"""The Embedding Projector files (`models.projector`), read back with
TensorBoard's own proto and TensorFlow's checkpoint reader: tensor rows,
metadata rows and sprite cells line up."""

import os

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector as tb_projector

from models import projector


def test_tensor_metadata_and_sprite_line_up(cifar10_sample, tmp_path):
  (images, labels), _ = cifar10_sample
  images, labels = images[:300], labels[:300]
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(300, 16)).astype(np.float32)
  ids = [f"span-1/train/{i}" for i in range(300)]
  classes = [f"c\t{label}" for label in labels]  # a tab must not split a row
  spans = ["1"] * 300
  folder = str(tmp_path / "projector")
  written = projector.write(folder, vectors, ids, classes, spans, images, max_points=200)
  assert written["points"] == 200 and written["dim"] == 16
  config = tb_projector.ProjectorConfig()
  with open(os.path.join(folder, "projector_config.pbtxt")) as f:
    text_format.Parse(f.read(), config)
  (embedding,) = config.embeddings
  # The tensor: the sampled rows, in order.
  reader = tf.train.load_checkpoint(folder)
  tensor = reader.get_tensor(embedding.tensor_name)
  rows = written["rows"]
  assert tensor.shape == (200, 16) and len(set(rows)) == 200
  np.testing.assert_array_equal(tensor, vectors[rows])
  # The metadata: a header, then one row a vector, the same order.
  metadata = projector.read_metadata(os.path.join(folder))
  assert metadata[0] == ["id", "class", "span"] and len(metadata) == 201
  assert all(len(row) == 3 for row in metadata)
  assert [row[0] for row in metadata[1:]] == [ids[r] for r in rows]
  # The sprite: a square grid of cells, at most 8192 px, image i in cell i.
  sheet = np.asarray(Image.open(os.path.join(folder, embedding.sprite.image_path)))
  cell = embedding.sprite.single_image_dim[0]
  assert list(embedding.sprite.single_image_dim) == [cell, cell] == [32, 32]
  grid = int(np.ceil(np.sqrt(200)))
  assert sheet.shape == (grid * cell, grid * cell, 3) and sheet.shape[0] <= projector.SPRITE_MAX_PX
  last = 199
  row, col = divmod(last, grid)
  np.testing.assert_array_equal(
      sheet[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell], images[rows[last]]
  )
  assert not sheet[-cell:, -cell:].any()  # the cells past the last image are empty


def test_a_large_sample_shrinks_the_cells_to_fit_8192_px():
  grid_images = [np.zeros([32, 32, 3], np.uint8)] * 10_000
  sheet = projector.sprite(grid_images)
  assert sheet.shape[0] == 100 * 32 <= projector.SPRITE_MAX_PX
  many = [np.zeros([4, 4, 3], np.uint8)] * 300_000
  assert projector.sprite(many).shape[0] <= projector.SPRITE_MAX_PX
