"""Names and paths shared by the pipeline, the Trainers, the server, the report,
the benchmarks, the notebooks and the tests: the contract between them.

Standard library only, so that anything can import it without TensorFlow.
"""

import os
import re
from typing import Iterable, List, Optional

PIPELINE_NAME = "mae-tfx"  # CIFAR-10's; other data sets: pipeline_name_for
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_PATH = os.path.join(PROJECT_DIR, "schemas", "schema.pbtxt")

# ---- features (schema, preprocessing_fn, Trainers, signatures) -------------
IMAGE_KEY = "image"
LABEL_KEY = "label"  # class id: the position of the class name in CLASS_NAME_KEY's
CLASS_NAME_KEY = "class_name"  # domain in the schema (the name <-> id mapping)
# Splits of the Examples: the probe and the Evaluator use train and test; the
# MAE also pretrains on the unlabeled split when there is one.
TRAIN_SPLIT, TEST_SPLIT, UNLABELED_SPLIT = "train", "test", "unlabeled"
CORPUS_SPLIT = "corpus"  # SearchCorpusGen's one split: images searched, not trained on
ID_KEY = "id"  # an embedding record's image (components/search_index_gen.py)
SPAN_KEY = "span"  # an embedding record's span: the search filter's `span` namespace
# An embedding record's small JPEG of its image (models/thumbnails.py), for
# the index's thumbnail store; absent when search.thumbnail_px is 0.
THUMBNAIL_KEY = "thumbnail"
# An image-folder example's file, relative to its root ("cat/x.png"; the
# unlabeled folder's as "unlabeled/<relative path>"): its search id.
IMAGE_PATH_KEY = "image_path"
# Per-image figures ExampleGen adds to every example, for StatisticsGen's
# histograms and the drift comparators between spans (schemas/): the decoded
# size and the mean of each RGB channel (0-255). Not parsed for training or
# serving.
IMAGE_HEIGHT_KEY, IMAGE_WIDTH_KEY = "image_height", "image_width"
CHANNEL_MEAN_KEYS = ("mean_red", "mean_green", "mean_blue")
IMAGE_STATISTICS_KEYS = (IMAGE_HEIGHT_KEY, IMAGE_WIDTH_KEY, *CHANNEL_MEAN_KEYS)
# Transform's custom_config key: the size preprocessing_fn resizes images to.
IMAGE_SIZE_CONFIG_KEY = "image_size"

# ---- the DAG's two Trainers (node ids in MLMD, log prefixes) ---------------
MAE_TRAINER = "mae_pretrain"  # pretrains the MAE
PROBE_TRAINER = "linear_probe"  # the linear probe (and k-NN) on its frozen encoder
# The headline k-NN classifier (the served k-NN votes, the gate's second
# accuracy), also reported at every k of KNN_KS (as in InstDisc and lightly's
# benchmarks).
KNN_K = 20
KNN_KS = (20, 200)

# ---- serving signatures of the pushed SavedModel ---------------------------
SERVING_DEFAULT = "serving_default"  # image_bytes -> embedding
SERVING_BFLOAT16 = "serving_bfloat16"  # the same, the encoder computing in bfloat16
EMBED_EXAMPLES = "embed_examples"  # examples -> embedding
CLASSIFY_EXAMPLES = "classify_examples"  # examples -> probabilities, knn_probabilities
CLASSIFY_EXAMPLES_BFLOAT16 = "classify_examples_bfloat16"  # the same, the encoder in bfloat16
# What answers each float32 signature when a server runs in bfloat16.
BFLOAT16_TWIN = {SERVING_DEFAULT: SERVING_BFLOAT16, CLASSIFY_EXAMPLES: CLASSIFY_EXAMPLES_BFLOAT16}
IMAGE_BYTES_INPUT = "image_bytes"  # "_bytes": TF Serving's REST API takes b64
EXAMPLES_INPUT = "examples"
EMBEDDING_KEY = "embedding"
PROBABILITIES_KEY = "probabilities"
CLASS_NAME_OUTPUT = "class_name"  # classify_examples: the most probable class
KNN_PROBABILITIES_KEY = "knn_probabilities"  # classify_examples: the k-NN votes
# The pieces of the image-bytes signatures, saved beside them as functions
# (not signatures: TF Serving ignores them) so a server can compile the
# part after decoding (serving.model_store): {signature: embedding function}
# and the decoding + Transform function they share.
PREPARE_IMAGE_BYTES = "prepare_image_bytes"  # image_bytes -> Transform's images
EMBED_IMAGES = {
    SERVING_DEFAULT: "embed_images",  # Transform's images -> embedding
    SERVING_BFLOAT16: "embed_images_bfloat16",
}
# The two classifiers as the log, the report and the figures name them.
CLASSIFIER_TITLES = {PROBABILITIES_KEY: "linear probe", KNN_PROBABILITIES_KEY: f"{KNN_K}-NN"}

# ---- files the Trainers write ----------------------------------------------
MAE_CONFIG_FILE = "config.json"  # the ModelConfig of a saved MAE
MAE_WEIGHTS_PREFIX = os.path.join("weights", "mae")
MAE_TRAINING_FILE = "training.json"  # a saved MAE's data digest and warm start
SUMMARY_FILE = "train_summary.json"  # each Trainer's, in its ModelRun dir
RECONSTRUCTIONS_FILE = "reconstructions.png"
CLASS_NAMES_FILE = "class_names.txt"  # one name a line, line i = id i (an asset)
# Ids taken out of search for good, one a line, in the data folder (or --removed).
REMOVED_FILE = "removed.txt"
# A folder being written, `.staging-<version>-<pid>`, renamed into place when
# whole (a pushed version, its projector): readers skip it, the next writer
# removes one a killed process left.
STAGING_PREFIX = ".staging-"
# A pushed version's nearest-neighbour index over its corpus
# (models/search_index.py): beside the SavedModel, where TF Serving ignores it.
SEARCH_INDEX_DIR = os.path.join("assets.extra", "search_index")
# The Pusher's PushedModel properties: the Embedding Projector folder it
# wrote for the version (`projector_dir`), and what that holds, or why none.
PROJECTOR_PROPERTY, PROJECTOR_SUMMARY_PROPERTY = "projector", "projector_summary"
# The search artifacts' MLMD types; "<namespace>.<Name>", as Vertex AI
# Pipelines requires of a custom type.
EMBEDDINGS_TYPE = "mae_tfx.Embeddings"
SEARCH_INDEX_TYPE = "mae_tfx.SearchIndex"
# A SearchIndex artifact's property: the size of the thumbnail store it wrote.
THUMBNAIL_BYTES_PROPERTY = "thumbnail_bytes"

# ---- an Examples artifact: its split folders, files and MLMD properties -----
SPLIT_PREFIX = "Split-"  # <artifact>/Split-<name>/ (TFX's layout)
BAD_IMAGES_FILE = "bad_images.txt"  # skipped files (--skip-bad-images)
BAD_IMAGES_PROPERTY = "bad_images"  # how many were skipped
CLASS_NAMES_PROPERTY = "class_names"  # JSON list, id order
SPAN_PROPERTY = "span"  # TFX's: the span ExampleGen ingested
# A data source laid out in spans (TFX's {SPAN} convention): <root>/span-<N>/
# holds what arrives at once, in any layout a source without spans has.
SPAN_FOLDER_PREFIX = "span-"
SPAN_FOLDER_PATTERN = SPAN_FOLDER_PREFIX + "{SPAN}"  # ExampleGen's input pattern

# ---- where a local run reads and writes -------------------------------------
OUTPUT_ENV = "MAE_TFX_OUTPUT"  # default output folder: <project>/outputs
CIFAR10_ENV = "MAE_TFX_CIFAR10"  # a local CIFAR-10 copy (folder or archive)
PROFILE_ENV = "MAE_TFX_PROFILE"
RUN_ID_ENV = "MAE_TFX_RUN_ID"  # the run the notebooks show (default: the newest)
# Where tests and benchmarks extract a CIFAR-10 archive (a run uses <output>/cache).
DATA_CACHE_DIR = os.path.join(PROJECT_DIR, ".cache", "data")


def pipeline_name_for(dataset: Optional[str] = None) -> str:
  """The pipeline of a data set: `mae-tfx` for CIFAR-10, `mae-tfx-<name>` for
  another (its folder's name), so that each has its own runs in MLMD, its
  own latest blessed model to be judged against and its own served versions."""
  if not dataset:
    return PIPELINE_NAME
  slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-")
  return f"{PIPELINE_NAME}-{slug}" if slug else PIPELINE_NAME


def default_output_dir() -> str:
  """Where a local run writes: $MAE_TFX_OUTPUT, else <project>/outputs (absolute)."""
  return os.path.abspath(os.environ.get(OUTPUT_ENV) or os.path.join(PROJECT_DIR, "outputs"))


def pipeline_root(output_dir: Optional[str] = None) -> str:
  """Where TFX writes the components' artifacts, and the Trainers their
  TensorBoard logs: the logdir of `make tensorboard`."""
  return os.path.join(output_dir or default_output_dir(), "pipeline_root")


def projector_dir(output_dir: Optional[str] = None, pipeline_name: str = PIPELINE_NAME) -> str:
  """Where the Pusher writes TensorBoard's Embedding Projector files of the
  newest version it pushed (`<this>/<version>/`, models/projector.py): in
  the pipeline root, so TensorBoard shows them beside the Trainers' curves."""
  return os.path.join(pipeline_root(output_dir), "projector", pipeline_name)


def metadata_path(output_dir: Optional[str] = None) -> str:
  """The MLMD SQLite database of the runs written to `output_dir`."""
  return os.path.join(output_dir or default_output_dir(), "metadata.sqlite")


def serving_model_dir(output_dir: Optional[str] = None, pipeline_name: str = PIPELINE_NAME) -> str:
  """The Pusher's base directory: one numeric sub-directory per pushed version."""
  return os.path.join(output_dir or default_output_dir(), "serving_model", pipeline_name)


def carried_mae_dir(serving_model_dir: str) -> str:
  """Where the linear probe's Model artifact carries the MAE its encoder came
  from (beside its Format-Serving dir, so the Pusher does not push it): what
  a warm start on a later span starts from."""
  return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), "mae")


def split_dir(artifact_uri: str, split: str) -> str:
  """The folder of one split of an artifact (Examples, statistics, anomalies)."""
  return os.path.join(artifact_uri, f"{SPLIT_PREFIX}{split}")


def split_names(entries: Iterable[str]) -> List[str]:
  """The splits among an artifact folder's entries (its Split-<name> folders)."""
  return sorted(e.rstrip("/")[len(SPLIT_PREFIX) :] for e in entries if e.startswith(SPLIT_PREFIX))


def split_files(examples_uri: str, split: str) -> List[str]:
  """File patterns of one split of an Examples artifact (GZIP TFRecords)."""
  return [os.path.join(split_dir(examples_uri, split), "*")]


def pushed_versions(entries: Iterable[str]) -> List[int]:
  """The version numbers among a serving directory's entries, oldest first.

  Only all-digit names are versions: the Pusher copies into a hidden
  `.staging-<version>-<pid>` directory first and renames it into place, so
  anything else is not (yet) a version. Trailing slashes (GCS listings) are
  ignored."""
  names = (entry.rstrip("/") for entry in entries)
  return sorted(int(name) for name in names if name.isdigit() and name.isascii())
