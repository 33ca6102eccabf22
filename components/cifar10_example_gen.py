"""Cifar10ExampleGen: the official CIFAR-10 "python version" layout -> tf.Examples.

The Beam/TFX adapter over `models.cifar10` (the batch-file format).

`input_base` is an extracted `cifar-10-batches-py/` folder. The train split is
`data_batch_*` (50,000 images), the test split `test_batch` (10,000). Each
image becomes `{image: PNG bytes (lossless), label: int64, class_name}`, the
name from `batches.meta`. Beam reads one
batch file per element, so the work spreads over the runner's workers and
the 60,000 images are never collected in one list.

Labels are passed through unchecked: the schema (label in [0, 9]) and
ExampleValidator judge them. What this component rejects is a file that is
not a CIFAR-10 batch: unreadable, truncated, or with fields of the wrong type
or shape; the error names the file and the field.
"""

import os
from typing import Any, Dict, Iterator, List

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs

from models.cifar10 import encode_png, read_batch_file, read_class_names
from models.examples import ImageStatistics, image_example

TRAIN_PATTERN = "data_batch_*"
TEST_PATTERN = "test_batch"
META_FILE = "batches.meta"


def batch_file_to_examples(path: str, class_names: List[str]) -> Iterator[tf.train.Example]:
  """The tf.Examples of one batch file, in file order: {image: PNG, label,
  class_name} and the image's statistics."""
  images, labels = read_batch_file(path)
  for image, label_id in zip(images, labels):
    label = int(label_id)
    # An id without a name keeps it as its name: the schema flags both.
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    yield image_example(encode_png(image), label, name, statistics=ImageStatistics.of_array(image))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _CifarBatchesToExample(
    pipeline: beam.Pipeline,  # pylint: disable=invalid-name
    exec_properties: Dict[str, Any],
    split_pattern: str,
) -> beam.pvalue.PCollection:
  input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
  pattern = os.path.join(input_base, split_pattern)
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"No CIFAR-10 batch file matches {pattern}")
  class_names = read_class_names(os.path.join(input_base, META_FILE))
  return (
      pipeline
      | "BatchFiles" >> beam.Create(files)
      | "Spread" >> beam.Reshuffle()
      | "ToExamples" >> beam.FlatMap(batch_file_to_examples, class_names)
  )


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """ExampleGen executor for the CIFAR-10 python layout."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    """The PTransform that reads one split's batch files into tf.Examples."""
    return _CifarBatchesToExample


def cifar10_input_config() -> example_gen_pb2.Input:
  """ExampleGen's splits of the folder: train (`data_batch_*`), test (`test_batch`)."""
  return example_gen_pb2.Input(
      splits=[
          example_gen_pb2.Input.Split(name="train", pattern=TRAIN_PATTERN),
          example_gen_pb2.Input.Split(name="test", pattern=TEST_PATTERN),
      ]
  )


class Cifar10ExampleGen(FileBasedExampleGen):
  """FileBasedExampleGen preset for `cifar-10-batches-py/` (train + test)."""

  def __init__(self, input_base: str):
    super().__init__(
        input_base=input_base,
        input_config=cifar10_input_config(),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
    )
