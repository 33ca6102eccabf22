"""ImageFolderExampleGen: a folder of image files -> tf.Examples, on Beam.

The Beam/TFX adapter over `models.image_files`. `input_base` is a labeled
folder, `<root>/<class>/<image>` (split into train/test by a hash of each
file's path, `test_fraction` to test) or `<root>/train|test/<class>/<image>`
(splits as given), or span-<N>/ folders of either (`spans`: the newest
span, or `span`; TFX's {SPAN} convention, the span on the artifact). An
optional unlabeled folder (any depth) becomes a third
split, `unlabeled`, of {image} examples that only MAE pretraining reads.

The executor lists the folders to number the classes; a Beam worker lists
them again to emit the files (so the job graph holds folder names, not a
million paths), and the reading and checking of the images is reshuffled
over the workers, on Dataflow too. Each labeled image becomes
{image: bytes, label: class id, class_name}. A file with an image extension
that does not decode stops the run with the file named, or, with
`skip_bad_images`, is left out and listed in `bad_images.txt` beside the
splits (its count is the artifact's `bad_images` property). The class names
(id order) are the artifact's `class_names` property in MLMD.

What it shares with `TFRecordImageExampleGen` is in `components.image_examples_executor`.
"""

from typing import Iterator, Optional

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec

from components.image_examples_executor import (
    ImageExamplesExecutor,
    Item,
    ingestion_options,
    input_config,
    options_config,
    range_config,
    read_files,
)
from models import image_files

# For the driver's input fingerprint (what makes a cached run re-run): the
# files of the class-folder layout, the class folders of the split layout.
_INPUT_PATTERN = "*/*"


def labeled_files(root: str, split: str, test_fraction: float, path_prefix: str) -> Iterator[Item]:
  """The files of one split of a labeled folder (a Beam worker lists them)."""
  layout = image_files.detect_layout(root, test_fraction)
  for rel, label in layout.files[split]:
    yield (image_files.join_path(root, rel), label, layout.class_names[label], path_prefix + rel)


class Executor(ImageExamplesExecutor):
  """Lists the class folders here; reads and checks the images in Beam."""

  def labeled_splits(self, pipeline, root, path_prefix, options):
    """(class names, {split: (Examples, bad files)}) of `root`'s layout."""
    test_fraction = float(options.get("test_fraction", 0.2))
    layout = image_files.detect_layout(root, test_fraction)
    skip_bad = bool(options.get("skip_bad_images", False))
    return layout.class_names, {
        split: read_files(
            pipeline, split, root, labeled_files, skip_bad, split, test_fraction, path_prefix
        )
        for split in layout.files
    }


class ImageFolderExampleGen(FileBasedExampleGen):
  """FileBasedExampleGen for a folder of class folders of images."""

  def __init__(
      self,
      input_base: str,
      test_fraction: float = 0.2,
      unlabeled_base: Optional[str] = None,
      skip_bad_images: bool = False,
      fingerprint: str = "",
      spans: bool = False,
      span: Optional[int] = None,
  ):
    super().__init__(
        input_base=input_base,
        input_config=input_config(_INPUT_PATTERN, spans, "images"),
        range_config=range_config(span),
        custom_config=options_config(
            ingestion_options(test_fraction, unlabeled_base, skip_bad_images, fingerprint, spans)
        ),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
    )
