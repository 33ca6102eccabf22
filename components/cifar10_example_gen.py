"""Cifar10ExampleGen: the official CIFAR-10 "python version" layout -> tf.Examples.

`input_base` is an extracted `cifar-10-batches-py/` folder. The train split is
`data_batch_*` (50,000 images), the test split `test_batch` (10,000). Each
image becomes `{image: PNG bytes (lossless), label: int64}`. Beam reads one
batch file per element, so the work spreads over the runner's workers and
the 60,000 images are never collected in one list.

Labels are passed through unchecked: the schema (label in [0, 9]) and
ExampleValidator judge them. What this component rejects is a file that is
not a CIFAR-10 batch: unreadable, truncated, or with fields of the wrong type
or shape; the error names the file and the field.
"""

import io
import os
import pickle
from typing import Any, Dict, Iterator, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from PIL import Image
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs

from models.config import IMAGE_KEY, IMAGE_SIZE, LABEL_KEY

TRAIN_PATTERN = "data_batch_*"
TEST_PATTERN = "test_batch"
_PIXELS = IMAGE_SIZE * IMAGE_SIZE * 3


class CifarFormatError(ValueError):
  """A batch file that does not follow the CIFAR-10 python format."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles plain containers and numpy arrays, nothing that runs code."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"),
              ("_codecs", "encode")}  # protocol-2 pickles of bytes use it

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


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
    raise CifarFormatError(f"{path}: expected a pickled dict, got "
                           f"{type(batch).__name__}")
  for key in (b"data", b"labels"):
    if key not in batch:
      raise CifarFormatError(f"{path}: field {key!r} missing; found "
                             f"{sorted(batch)}")
  pixels = batch[b"data"]
  if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or
      pixels.ndim != 2 or pixels.shape[1] != _PIXELS):
    got = (f"{pixels.dtype} array of shape {pixels.shape}"
           if isinstance(pixels, np.ndarray) else type(pixels).__name__)
    raise CifarFormatError(f"{path}: field b'data' must be a uint8 array of "
                           f"shape (N, {_PIXELS}), got {got}")
  try:
    labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise CifarFormatError(f"{path}: field b'labels' must be a list of ints "
                           f"({e})") from e
  if len(labels) != len(pixels):
    raise CifarFormatError(f"{path}: {len(pixels)} images in b'data' but "
                           f"{len(labels)} entries in b'labels'")
  images = pixels.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
  return images, labels


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image, mode="RGB").save(buf, format="PNG")
  return buf.getvalue()


def to_example(image: np.ndarray, label: int) -> tf.train.Example:
  return tf.train.Example(features=tf.train.Features(feature={
      IMAGE_KEY: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[encode_png(image)])),
      LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  }))


def batch_file_to_examples(path: str) -> Iterator[tf.train.Example]:
  images, labels = read_batch_file(path)
  for image, label in zip(images, labels):
    yield to_example(image, int(label))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _CifarBatchesToExample(pipeline: beam.Pipeline,  # pylint: disable=invalid-name
                           exec_properties: Dict[str, Any],
                           split_pattern: str) -> beam.pvalue.PCollection:
  input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
  pattern = os.path.join(input_base, split_pattern)
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"No CIFAR-10 batch file matches {pattern}")
  return (pipeline
          | "BatchFiles" >> beam.Create(files)
          | "Spread" >> beam.Reshuffle()
          | "ToExamples" >> beam.FlatMap(batch_file_to_examples))


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """ExampleGen executor for the CIFAR-10 python layout."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _CifarBatchesToExample


def cifar10_input_config() -> example_gen_pb2.Input:
  return example_gen_pb2.Input(splits=[
      example_gen_pb2.Input.Split(name="train", pattern=TRAIN_PATTERN),
      example_gen_pb2.Input.Split(name="test", pattern=TEST_PATTERN),
  ])


class Cifar10ExampleGen(FileBasedExampleGen):
  """FileBasedExampleGen preset for `cifar-10-batches-py/` (train + test)."""

  def __init__(self, input_base: str):
    super().__init__(
        input_base=input_base,
        input_config=cifar10_input_config(),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))
