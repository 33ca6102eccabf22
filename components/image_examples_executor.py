"""What both image ExampleGens (`ImageFolderExampleGen`,
`TFRecordImageExampleGen`) share: their options, reading and checking image
files in Beam, and `ImageExamplesExecutor`, which writes the labeled splits a
subclass reads, the unlabeled folder's split, the list of skipped files
(`bad_images.txt` beside the splits) and the artifact's properties: the class
names (id order) and how many bad images were skipped."""

import json
import os
import posixpath
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen import base_example_gen_executor, write_split
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from models import image_files, run_log
from models.examples import image_example
from models.names import (
    BAD_IMAGES_FILE,
    BAD_IMAGES_PROPERTY,
    CLASS_NAMES_PROPERTY,
    SPAN_FOLDER_PATTERN,
    UNLABELED_SPLIT,
)

BAD = "bad"  # the tag of a skipped file's output
# (path, label, class name, image_path: the example's IMAGE_PATH_KEY)
Item = Tuple[str, Optional[int], Optional[str], str]


def options_config(options: Dict[str, Any]) -> example_gen_pb2.CustomConfig:
  """ExampleGen's CustomConfig carrying `options` (a JSON-able dict)."""
  struct = struct_pb2.Struct()
  struct.update(options)
  config = example_gen_pb2.CustomConfig()
  config.custom_config.Pack(struct)
  return config


def read_options(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  """The options `options_config` packed into the run's custom_config ({} if none)."""
  config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(
      exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}", config
  )
  struct = struct_pb2.Struct()
  if config.HasField("custom_config"):
    config.custom_config.Unpack(struct)
  return json_format.MessageToDict(struct)


def ingestion_options(
    test_fraction: float,
    unlabeled_base: Optional[str],
    skip_bad_images: bool,
    fingerprint: str,
    spans: bool,
    **more,
) -> Dict[str, Any]:
  """The options both image ExampleGens take. `fingerprint`: a digest of the
  local files (`image_files.folder_fingerprint`), so that a cached run
  re-runs when any image changes; the driver's own covers what its input
  pattern matches, the top of `input_base`. `spans`: `input_base` holds
  span-<N>/ folders, of which the driver picked one."""
  return dict(
      test_fraction=test_fraction,
      unlabeled_base=unlabeled_base or "",
      skip_bad_images=skip_bad_images,
      fingerprint=fingerprint,
      spans=spans,
      **more,
  )


def input_config(pattern: str, spans: bool, name: str) -> example_gen_pb2.Input:
  """ExampleGen's one input split matching `pattern` (under span-{SPAN}/
  when the source is laid out in spans): what the driver fingerprints, and
  where it finds the spans."""
  if spans:
    pattern = f"{SPAN_FOLDER_PATTERN}/{pattern}"
  return example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name=name, pattern=pattern)])


def range_config(span: Optional[int]) -> Optional[range_config_pb2.RangeConfig]:
  """The driver's span: `span` when given, else (None) the newest."""
  if span is None:
    return None
  return range_config_pb2.RangeConfig(
      static_range=range_config_pb2.StaticRange(start_span_number=span, end_span_number=span)
  )


def labeled_root(
    input_base: str, exec_properties: Dict[str, Any], options: Dict[str, Any]
) -> Tuple[str, str]:
  """(the folder this run ingests, the prefix of its images' paths): the
  span's folder the driver resolved, or `input_base` itself."""
  if not options.get("spans"):
    return input_base, ""
  span = int(exec_properties[example_gen_utils.SPAN_PROPERTY_NAME])
  root = image_files.span_root(input_base, span)
  return root, f"{posixpath.basename(root)}/"


def file_to_example(item: Item, skip_bad: bool) -> Iterator:
  """(path, label, class name, image path) -> its Example; a bad file
  raises, or, when skipping, comes out tagged BAD with the reason."""
  path, label, class_name, image_path = item
  try:
    image = image_files.read_image(path)
  except image_files.BadImageError as e:
    if not skip_bad:
      raise
    yield beam.pvalue.TaggedOutput(BAD, str(e))
    return
  yield image_example(image.data, label, class_name, image_path, image.statistics)


Split = Tuple[beam.pvalue.PCollection, beam.pvalue.PCollection]  # (Examples, bad)


def unlabeled_files(root: str) -> Iterator[Item]:
  """The `Item`s of the unlabeled folder's images, any depth: no label or
  class name; the image path is `unlabeled/<path under root>`."""
  for rel in image_files.list_images(root, recursive=True):
    yield image_files.join_path(root, rel), None, None, f"{UNLABELED_SPLIT}/{rel}"


def read_files(
    pipeline: beam.Pipeline, split: str, root: str, list_files, skip_bad: bool, *list_args
) -> Split:
  """The Examples and the skipped files' reasons of one split: `list_files(root,
  *list_args)` yields its `Item`s in a worker."""
  results = (
      pipeline
      | f"Root[{split}]" >> beam.Create([root])
      | f"Files[{split}]" >> beam.FlatMap(list_files, *list_args)
      | f"Spread[{split}]" >> beam.Reshuffle()
      | f"Read[{split}]"
      >> beam.FlatMap(file_to_example, skip_bad).with_outputs(BAD, main="examples")
  )
  return results.examples, results[BAD]


def _write_lines(lines: List[str], path: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(f"{line}\n" for line in sorted(lines)))


class ImageExamplesExecutor(base_example_gen_executor.BaseExampleGenExecutor):
  """Writes the labeled splits a subclass reads (`labeled_splits`), the
  unlabeled folder's split, the list of skipped files and the class names."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    """Unused: `Do` builds every split's Beam graph itself, so this raises."""
    raise NotImplementedError(f"{type(self).__name__} builds its splits in Do")

  def labeled_splits(
      self, pipeline: beam.Pipeline, root: str, path_prefix: str, options: Dict[str, Any]
  ) -> Tuple[List[str], Dict[str, Split]]:
    """(class names, {split: (Examples, skipped files' reasons)}) of the
    labeled data in `root` (the source, or its span's folder); an image
    file's example names it as `path_prefix` + its path in `root`."""
    raise NotImplementedError

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    """Writes the splits, `bad_images.txt` and the Examples artifact's properties."""
    self._log_startup(input_dict, output_dict, exec_properties)
    options = read_options(exec_properties)
    skip_bad = bool(options.get("skip_bad_images", False))
    unlabeled = options.get("unlabeled_base")
    if unlabeled and not image_files.list_images(unlabeled, recursive=True):
      raise ValueError(
          f"{unlabeled}: the unlabeled folder holds no images "
          f"({', '.join(image_files.IMAGE_EXTENSIONS)})"
      )
    outputs = output_dict[standard_component_specs.EXAMPLES_KEY]
    examples = artifact_utils.get_single_instance(outputs)
    bad_list = os.path.join(examples.uri, BAD_IMAGES_FILE)
    with self._make_beam_pipeline() as pipeline:
      root, path_prefix = labeled_root(
          exec_properties[standard_component_specs.INPUT_BASE_KEY], exec_properties, options
      )
      class_names, splits = self.labeled_splits(pipeline, root, path_prefix, options)
      if unlabeled:
        splits[UNLABELED_SPLIT] = read_files(
            pipeline, UNLABELED_SPLIT, unlabeled, unlabeled_files, skip_bad
        )
      examples.split_names = artifact_utils.encode_split_names(list(splits))
      for split, (split_examples, _) in splits.items():
        _ = split_examples | f"WriteSplit[{split}]" >> write_split.WriteSplit(
            artifact_utils.get_split_uri(outputs, split),
            example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            exec_properties,
        )
      _ = (
          [bad for _, bad in splits.values()]
          | "BadFiles" >> beam.Flatten()
          | "ListBad" >> beam.combiners.ToList()
          | "WriteBad" >> beam.Map(_write_lines, bad_list)
      )
    with tf.io.gfile.GFile(bad_list) as f:
      skipped = [line for line in f.read().splitlines() if line]
    if skipped:
      run_log.log.warning(
          "[%s] skipped %d bad image(s), listed in %s:\n  %s",
          type(self).__module__,
          len(skipped),
          bad_list,
          "\n  ".join(skipped[:20]),
      )
    examples.set_string_custom_property(CLASS_NAMES_PROPERTY, json.dumps(class_names))
    examples.set_int_custom_property(BAD_IMAGES_PROPERTY, len(skipped))
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(
        examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP)
    )
