"""SearchCorpusGen: images to search that the model was not trained on (the
runners' `--search-corpus`), as one split, `corpus`, of Examples; the
CorpusEmbedder then indexes them beside the train split.

`input_base` is a folder of images, any depth, or a folder of TFRecord files
of tf.Examples (`image_feature`, `label_feature` and an optional
`class_names.txt`, as TFRecordImageExampleGen reads them). Search ids: an
image's path under the folder (the examples' `image_path`), a record's
`corpus/<index>` (`models.examples.search_id`). Class names: an image's first
folder (`image_files.folder_label`, as `serving.embed --images` labels them),
a record's label through `class_names.txt`; none otherwise. A bad image stops
the run naming the file, or with `skip_bad_images` is skipped and listed.
"""

from typing import Iterator

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.image_examples_executor import (
    ImageExamplesExecutor,
    Item,
    ingestion_options,
    options_config,
    read_files,
)
from components.tfrecord_example_gen import read_records
from models import image_files
from models.examples import TFRECORD_SUFFIXES, tfrecord_files
from models.names import CORPUS_SPLIT


def corpus_files(root: str) -> Iterator[Item]:
  """The `Item`s of the corpus folder's images, any depth: no label, the
  first folder as class name (if any), the path under `root` as image path."""
  for rel in image_files.list_images(root, recursive=True):
    yield image_files.join_path(root, rel), None, image_files.folder_label(rel) or None, rel


def check_corpus(root: str) -> bool:
  """True for TFRecord files, False for images; raises ValueError naming the
  folder when it has neither."""
  if tfrecord_files(root):
    return True
  if not image_files.list_images(root, recursive=True):
    raise ValueError(
        f"{root}: the search corpus holds no images "
        f"({', '.join(image_files.IMAGE_EXTENSIONS)}) and no TFRecord files "
        f"({', '.join(TFRECORD_SUFFIXES)})"
    )
  return False


class Executor(ImageExamplesExecutor):
  """TFRecord files when the folder has them, else its images."""

  def labeled_splits(self, pipeline, root, path_prefix, options):
    """(no class names, {corpus: (Examples, bad files or records)}) of `root`."""
    del path_prefix  # the corpus is not laid out in spans
    if check_corpus(root):
      return [], {
          CORPUS_SPLIT: read_records(pipeline, CORPUS_SPLIT, root, tfrecord_files(root), options)
      }
    return [], {
        CORPUS_SPLIT: read_files(
            pipeline, CORPUS_SPLIT, root, corpus_files, bool(options.get("skip_bad_images", False))
        )
    }


class SearchCorpusGen(FileBasedExampleGen):
  """FileBasedExampleGen of the search corpus: one `corpus` split."""

  def __init__(
      self,
      input_base: str,
      image_feature: str = "image",
      label_feature: str = "label",
      skip_bad_images: bool = False,
      fingerprint: str = "",
  ):
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name=CORPUS_SPLIT, pattern="*")]
        ),
        custom_config=options_config(
            ingestion_options(
                0.0,
                None,
                skip_bad_images,
                fingerprint,
                spans=False,
                image_feature=image_feature,
                label_feature=label_feature,
            )
        ),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
    )
