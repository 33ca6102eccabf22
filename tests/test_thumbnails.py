"""The thumbnail store: real CIFAR-10 images in, the same JPEGs out by row."""

import io

import numpy as np
from PIL import Image

from models import thumbnails
from models.cifar10 import read_batch_file


def _pngs(cifar10_dir, count):
  import os

  images, _ = read_batch_file(os.path.join(cifar10_dir, "test_batch"))
  encoded = []
  for image in images[:count]:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    encoded.append(buffer.getvalue())
  return images[:count], encoded


def test_store_returns_each_row_and_marks_the_missing(cifar10_dir, tmp_path):
  images, encoded = _pngs(cifar10_dir, 50)
  made = [thumbnails.make(e, 64) for e in encoded] + [thumbnails.make(b"not an image", 64)]
  assert made[-1] == b""
  size = thumbnails.write(str(tmp_path), made)
  store = thumbnails.ThumbnailStore.load(str(tmp_path))
  assert len(store) == 51 and store.size_bytes == size == sum(map(len, made)) + 52 * 8
  assert store[50] == b"" and store.select([3, 0]) == [made[3], made[0]]
  decoded = np.asarray(Image.open(io.BytesIO(store[7])))
  # 32 px images are not enlarged; JPEG at q85 stays close to the original.
  assert decoded.shape == (32, 32, 3)
  assert np.abs(decoded.astype(int) - images[7].astype(int)).mean() < 12
  assert thumbnails.ThumbnailStore.load(str(tmp_path / "none")) is None


def test_large_images_shrink_to_the_size_asked_keeping_their_shape():
  buffer = io.BytesIO()
  Image.new("RGB", (400, 200), (200, 30, 30)).save(buffer, format="PNG")
  assert Image.open(io.BytesIO(thumbnails.make(buffer.getvalue(), 64))).size == (64, 32)
