"""The CIFAR-10 "python version" batch-file format: read safely, with errors
that name the file and the field.

A batch file is a pickled dict {b"data": uint8 [N, 3072] (channel-major
32x32 RGB), b"labels": [N] ints, ...}. Only plain containers and numpy arrays
are unpickled, never code. Used by `Cifar10ExampleGen`, the benchmarks and
the tests.
"""

import io
import os
import pickle
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

CIFAR10_SIZE = 32  # the format's images are 32 x 32 RGB
_PIXELS = CIFAR10_SIZE * CIFAR10_SIZE * 3


class CifarFormatError(ValueError):
  """A batch file that does not follow the CIFAR-10 python format."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles plain containers and numpy arrays, nothing that runs code."""

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("_codecs", "encode"),
  }  # protocol-2 pickles of bytes use it

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def read_split(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images, labels) of the train split (the five batches in order) or
  the test split of a cifar-10-batches-py folder."""
  batches = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
  read = [read_batch_file(os.path.join(root, name)) for name in batches]
  return np.concatenate([r[0] for r in read]), np.concatenate([r[1] for r in read])


def read_batch_file(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """Reads one batch file -> (images [N, 32, 32, 3] uint8, labels [N] int64)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read()
  try:
    batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # pickle raises many types for damaged input.
    raise CifarFormatError(
        f"{path}: not a readable CIFAR-10 batch file ({type(e).__name__}: {e}); "
        f"{len(raw)} bytes; truncated or corrupt files fail this way"
    ) from e
  if not isinstance(batch, dict):
    raise CifarFormatError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
  for key in (b"data", b"labels"):
    if key not in batch:
      raise CifarFormatError(f"{path}: field {key!r} missing; found {sorted(batch)}")
  pixels = batch[b"data"]
  if (
      not isinstance(pixels, np.ndarray)
      or pixels.dtype != np.uint8
      or pixels.ndim != 2
      or pixels.shape[1] != _PIXELS
  ):
    got = (
        f"{pixels.dtype} array of shape {pixels.shape}"
        if isinstance(pixels, np.ndarray)
        else type(pixels).__name__
    )
    raise CifarFormatError(
        f"{path}: field b'data' must be a uint8 array of shape (N, {_PIXELS}), got {got}"
    )
  try:
    labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise CifarFormatError(f"{path}: field b'labels' must be a list of ints ({e})") from e
  if len(labels) != len(pixels):
    raise CifarFormatError(
        f"{path}: {len(pixels)} images in b'data' but {len(labels)} entries in b'labels'"
    )
  images = pixels.reshape(-1, 3, CIFAR10_SIZE, CIFAR10_SIZE).transpose(0, 2, 3, 1)
  return images, labels


def read_class_names(meta_path: str) -> List[str]:
  """The class names of `batches.meta` (b"label_names"), id order."""
  with tf.io.gfile.GFile(meta_path, "rb") as f:
    raw = f.read()
  try:
    meta = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
  except Exception as e:  # pickle raises many types for damaged input.
    raise CifarFormatError(
        f"{meta_path}: no readable b'label_names' ({type(e).__name__}: {e})"
    ) from e
  return names


def encode_png(image: np.ndarray) -> bytes:
  """[H, W, 3] uint8 RGB image -> PNG bytes (lossless)."""
  buf = io.BytesIO()
  Image.fromarray(image, mode="RGB").save(buf, format="PNG")
  return buf.getvalue()


def write_batch_file(
    path: str, images: np.ndarray, labels, batch_label: bytes = b"test batch"
) -> None:
  """Writes [N, 32, 32, 3] uint8 images in the official pickle format."""
  data = np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 1, 2)).reshape(
      len(images), -1
  )
  with open(path, "wb") as f:
    pickle.dump(
        {
            b"batch_label": batch_label,
            b"labels": [int(x) for x in labels],
            b"data": data,
            b"filenames": [b"img_%d.png" % i for i in range(len(images))],
        },
        f,
        protocol=2,
    )


def write_cifar_dir(root: str, train, test, class_names: List[str], batches: int = 5) -> str:
  """Writes a cifar-10-batches-py/ folder (`batches` train files, a test
  file, batches.meta) of (images, labels) pairs: a subset of CIFAR-10 the
  pipeline reads like the real one (tests, benchmarks). Returns `root`."""
  os.makedirs(root, exist_ok=True)
  for i, idx in enumerate(np.array_split(np.arange(len(train[1])), batches)):
    write_batch_file(
        os.path.join(root, f"data_batch_{i + 1}"),
        train[0][idx],
        train[1][idx],
        b"training batch %d of %d" % (i + 1, batches),
    )
  write_batch_file(os.path.join(root, "test_batch"), *test, b"testing batch 1 of 1")
  with open(os.path.join(root, "batches.meta"), "wb") as f:
    pickle.dump(
        {
            b"num_cases_per_batch": len(train[1]) // batches,
            b"label_names": [n.encode() for n in class_names],
            b"num_vis": 3072,
        },
        f,
        protocol=2,
    )
  return root
