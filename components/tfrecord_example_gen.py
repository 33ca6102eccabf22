"""TFRecordImageExampleGen: TFRecord files of tf.Example with images -> the
pipeline's Examples; an ImportExampleGen whose executor also maps the
features and checks the images.

`input_base` holds TFRecord files (GZIP or not, by suffix; see
`models.examples.TFRECORD_SUFFIXES`), either in `<root>/train/` and
`<root>/test/` (splits as given) or in `<root>/` (split into train/test by a
hash of each record's image bytes, `test_fraction` to test), or in
span-<N>/ folders laid out either way (`spans`: the newest span, or `span`).
Each record's
`image_feature` (encoded image bytes) and `label_feature` (int64 class id)
become the pipeline's `image` and `label`; the class names, id order, are
the lines of an optional `<root>/class_names.txt` (otherwise the ids
themselves). A record lacking either feature is passed on without it, so the
schema gate stops the run naming the split and the feature. Images are
checked as in ImageFolderExampleGen (a bad one stops the run, or is skipped
and listed with `skip_bad_images`); an unlabeled image folder may be added.
"""

import hashlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import component
from tfx.components.example_gen.import_example_gen.component import ImportExampleGen
from tfx.dsl.components.base import executor_spec

from components.image_examples_executor import (
    BAD,
    ImageExamplesExecutor,
    Split,
    ingestion_options,
    input_config,
    options_config,
    range_config,
)
from models import image_files
from models.examples import TFRECORD_SUFFIXES, image_example, tfrecord_files
from models.names import CLASS_NAMES_FILE, IMAGE_KEY, TEST_SPLIT, TRAIN_SPLIT


def record_to_example(
    record: Tuple[str, bytes],
    image_feature: str,
    label_feature: str,
    class_names: List[str],
    skip_bad: bool,
) -> Iterator:
  """(file, serialized tf.Example) -> the pipeline's Example, or (skipping)
  the bad record's reason tagged BAD."""
  path, serialized = record
  features = tf.train.Example.FromString(serialized).features.feature
  image = label = name = None
  if image_feature in features and features[image_feature].bytes_list.value:
    try:
      image = image_files.check_image(
          features[image_feature].bytes_list.value[0], f"{path}: a record's '{image_feature}'"
      )
    except image_files.BadImageError as e:
      if not skip_bad:
        raise
      yield beam.pvalue.TaggedOutput(BAD, str(e))
      return
  if label_feature in features:
    if features[label_feature].bytes_list.value:
      raise ValueError(
          f"{path}: feature '{label_feature}' holds bytes; the label must "
          f"be an int64 class id (names go in {CLASS_NAMES_FILE})"
      )
    if features[label_feature].int64_list.value:
      label = int(features[label_feature].int64_list.value[0])
      name = class_names[label] if 0 <= label < len(class_names) else str(label)
  # A missing image or label is left out, for the schema gate to name.
  yield image_example(image and image.data, label, name, statistics=image and image.statistics)


def _split_of(example: tf.train.Example, test_fraction: float) -> int:
  """0 (train) or 1 (test), from a hash of the image bytes (of the whole
  record when it has none)."""
  image = example.features.feature[IMAGE_KEY].bytes_list.value
  key = hashlib.sha256(image[0] if image else example.SerializeToString()).hexdigest()
  return int(image_files.hash_split(key, test_fraction) == TEST_SPLIT)


def read_records(
    pipeline: beam.Pipeline, split: str, input_base: str, files: List[str], options: Dict[str, Any]
) -> Split:
  """The pipeline's Examples (and the skipped records' reasons) of the
  TFRecord `files` of one split, their features mapped as `options` say."""
  if not files:
    raise FileNotFoundError(
        f"{input_base}: no TFRecord files ({', '.join(TFRECORD_SUFFIXES)}) "
        f"for the {split} split"
    )
  results = (
      pipeline
      | f"Files[{split}]" >> beam.Create(files)
      | f"Records[{split}]" >> beam.io.ReadAllFromTFRecord(with_filename=True)
      | f"Convert[{split}]"
      >> beam.FlatMap(
          record_to_example,
          options.get("image_feature", "image"),
          options.get("label_feature", "label"),
          image_files.read_class_names_file(input_base),
          bool(options.get("skip_bad_images", False)),
      ).with_outputs(BAD, main="examples")
  )
  return results.examples, results[BAD]


class Executor(ImageExamplesExecutor):
  """Reads the TFRecord files in Beam (ReadAllFromTFRecord), maps and checks."""

  def labeled_splits(self, pipeline, root, path_prefix, options):
    """(class names, {split: (Examples, bad records)}): `train/` and `test/`
    as given, else the records of `root` split by a hash of their images."""
    del path_prefix  # records have no file of their own
    class_names = image_files.read_class_names_file(root)

    def read(split: str, files: List[str]):
      return read_records(pipeline, split, root, files, options)

    given = {s: tfrecord_files(image_files.join_path(root, s)) for s in (TRAIN_SPLIT, TEST_SPLIT)}
    if all(given.values()):
      return class_names, {s: read(s, files) for s, files in given.items()}
    examples, bad = read("all", tfrecord_files(root))
    train, test = examples | "HashSplit" >> beam.Partition(
        lambda e, n: _split_of(e, float(options.get("test_fraction", 0.2))), 2
    )
    return class_names, {
        TRAIN_SPLIT: (train, bad),
        TEST_SPLIT: (test, pipeline | "NoBad" >> beam.Create([])),
    }


class TFRecordImageExampleGen(ImportExampleGen):
  """ImportExampleGen of image tf.Examples, with configurable feature names."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(
      self,
      input_base: str,
      image_feature: str = "image",
      label_feature: str = "label",
      test_fraction: float = 0.2,
      unlabeled_base: Optional[str] = None,
      skip_bad_images: bool = False,
      fingerprint: str = "",
      spans: bool = False,
      span: Optional[int] = None,
  ):
    # ImportExampleGen's own __init__ takes no custom_config: set up its base.
    component.FileBasedExampleGen.__init__(  # pylint: disable=non-parent-init-called
        self,
        input_base=input_base,
        input_config=input_config("*", spans, "records"),
        range_config=range_config(span),
        custom_config=options_config(
            ingestion_options(
                test_fraction,
                unlabeled_base,
                skip_bad_images,
                fingerprint,
                spans,
                image_feature=image_feature,
                label_feature=label_feature,
            )
        ),
    )
