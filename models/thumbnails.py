"""Small JPEG thumbnails of a search corpus, in one file addressed by row:
what the search page shows for each result (issue 39).

  search_index/
    thumbnails.bin          the JPEGs, one after the other, in the index's row order
    thumbnail_offsets.npy   int64 [N + 1]: row r is bytes offsets[r]:offsets[r + 1]
                            (empty: that image has none)

An image is shrunk to at most `size` px on its longer side (never
enlarged) and saved as a baseline JPEG: CIFAR-10's 32 x 32 images stay
32 x 32, about 1 KB each.
"""

import io
import os
from typing import Optional, Sequence, Tuple

import numpy as np

DATA_FILE = "thumbnails.bin"
OFFSETS_FILE = "thumbnail_offsets.npy"
JPEG_QUALITY = 85  # small artefacts at 32-128 px, a third of PNG's bytes


def make(encoded_image: bytes, size: int) -> bytes:
  """A JPEG of the encoded image (any format PIL reads) at most `size` px
  on its longer side, aspect kept; b"" when it cannot be decoded."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(io.BytesIO(encoded_image)) as opened:
      image = opened.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
  except (UnidentifiedImageError, OSError, ValueError):
    return b""


def pack(thumbnails: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray]:
  """The store's layout of `thumbnails` (row for row, b"" for none): (the
  JPEGs one after the other, uint8 [B]; int64 [N + 1], where each starts
  and the end)."""
  offsets = np.concatenate([[0], np.cumsum([len(t) for t in thumbnails], dtype=np.int64)])
  return np.frombuffer(b"".join(thumbnails), np.uint8), offsets


def write(folder: str, thumbnails: Sequence[bytes]) -> int:
  """Writes the store of `thumbnails` (row for row, b"" for none) into
  `folder`; returns its size in bytes."""
  import tensorflow as tf

  tf.io.gfile.makedirs(folder)
  data, offsets = pack(thumbnails)
  with tf.io.gfile.GFile(os.path.join(folder, DATA_FILE), "wb") as f:
    f.write(data.tobytes())
  buffer = io.BytesIO()
  np.save(buffer, offsets)
  with tf.io.gfile.GFile(os.path.join(folder, OFFSETS_FILE), "wb") as f:
    f.write(buffer.getvalue())
  return len(data) + offsets.nbytes


class ThumbnailStore:
  """A written store, read by row: local files are memory-mapped (a page
  read per thumbnail), others (gs://) read whole."""

  def __init__(self, data, offsets: np.ndarray):
    self._data, self.offsets = data, offsets

  @classmethod
  def load(cls, folder: str, rows: Optional[int] = None) -> Optional["ThumbnailStore"]:
    """The store in `folder`; None when it has none; ValueError when it
    cannot be read, or holds another number of rows than `rows` (the
    index's records) when given."""
    import tensorflow as tf

    data_path, offsets_path = (os.path.join(folder, n) for n in (DATA_FILE, OFFSETS_FILE))
    if not tf.io.gfile.exists(offsets_path):
      return None
    with tf.io.gfile.GFile(offsets_path, "rb") as f:
      offsets = np.load(io.BytesIO(f.read()))
    if "://" in data_path:
      with tf.io.gfile.GFile(data_path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    elif offsets[-1]:
      data = np.memmap(data_path, np.uint8, mode="r")
    else:
      data = np.zeros([0], np.uint8)
    if len(data) != offsets[-1]:
      raise ValueError(f"{data_path}: {len(data)} bytes, its offsets say {int(offsets[-1])}")
    if rows is not None and len(offsets) - 1 != rows:
      raise ValueError(f"{folder}: {len(offsets) - 1} thumbnails for an index of {rows} records")
    return cls(data, offsets)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, row: int) -> bytes:
    """Row `row`'s JPEG; b"" when that image has none."""
    return bytes(self._data[self.offsets[row] : self.offsets[row + 1]])

  @property
  def size_bytes(self) -> int:
    """The JPEGs' bytes and the offsets'."""
    return int(self.offsets[-1]) + self.offsets.nbytes

  def select(self, rows: Sequence[int]) -> list:
    """The thumbnails of `rows`, in that order."""
    return [self[int(r)] for r in rows]
