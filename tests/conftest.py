"""Shared fixtures: real CIFAR-10 from the local copy, small official-format subsets."""

import os
import pathlib
import subprocess
import sys
import warnings
from typing import List

import models  # noqa: F401  TensorFlow's environment, before TensorFlow loads
import numpy as np
import pytest
import tensorflow as tf

from models import names, run_log
from models import cifar10
from models.cifar10 import read_batch_file, write_batch_file  # noqa: F401  (tests use it)

# TFX brings google-api-core, whose notice about Python 3.10 (harmless:
# models/run_log.py) comes at import, where pytest's warning filters do not
# apply: once from each pytest-xdist process, into every CI log. TFX is
# imported here under a filter (beam_runner: for tests/session_tally.py).
with warnings.catch_warnings():
  warnings.filterwarnings(
      "ignore", message="You are using a non-supported Python version", category=FutureWarning
  )
  from pipeline import beam_runner, data_source  # noqa: F401

# What a session started (pipeline runs, server processes), printed by `make
# test`; and the check that tests starting either carry their marker.
pytest_plugins = ["tests.session_tally"]

LOCAL_COPY = os.environ.get(
    names.CIFAR10_ENV, os.path.join(os.path.dirname(names.PROJECT_DIR), "shared", "data", "cifar10")
)
CACHE_DIR = names.DATA_CACHE_DIR


def cifar10_class_names():
  """The CIFAR-10 class names, id order, as the curated schema lists them."""
  from models import schema

  return schema.class_names(schema.read_schema(names.SCHEMA_PATH))


def write_cifar_dir(root, train, test, batches=5):
  """A cifar-10-batches-py/ folder (`models.cifar10.write_cifar_dir`) with
  the curated class names."""
  return cifar10.write_cifar_dir(root, train, test, cifar10_class_names(), batches)


@pytest.fixture(scope="session")
def cifar10_dir():
  """The full real CIFAR-10 (extracted once into .cache/)."""
  if not os.path.exists(LOCAL_COPY):
    pytest.fail(
        f"The local CIFAR-10 copy {LOCAL_COPY} is missing; set "
        "MAE_TFX_CIFAR10 to a cifar-10-batches-py folder or archive. "
        "Tests never download."
    )
  return data_source.resolve_cifar10(LOCAL_COPY, CACHE_DIR)


@pytest.fixture(scope="session")
def cifar10_sample(cifar10_dir):
  """First 320 train and 100 test real images (class-balanced prefixes)."""
  train = read_batch_file(os.path.join(cifar10_dir, "data_batch_1"))
  test = read_batch_file(os.path.join(cifar10_dir, "test_batch"))
  return (train[0][:320], train[1][:320]), (test[0][:100], test[1][:100])


@pytest.fixture(scope="session")
def small_cifar_dir(cifar10_sample, tmp_path_factory):
  """A cifar-10-batches-py/ folder of the real sample, in the official format."""
  root = tmp_path_factory.mktemp("cifar_small") / "cifar-10-batches-py"
  return write_cifar_dir(str(root), *cifar10_sample)


def png_bytes(image):
  from models.cifar10 import encode_png

  return encode_png(np.asarray(image, np.uint8))


def jpeg_bytes(image, size=None):
  import io
  from PIL import Image

  img = Image.fromarray(np.asarray(image, np.uint8))
  if size:
    img = img.resize(size)
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def save_image(image, path, size=None, mode=None):
  """Writes a uint8 RGB image to `path` in the format its suffix names,
  resized to `size` (w, h) and converted to `mode` (e.g. "L", "RGBA")."""
  from PIL import Image

  img = Image.fromarray(np.asarray(image, np.uint8))
  if size:
    img = img.resize(size)
  if mode:
    img = img.convert(mode)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)
  return path


# Real CIFAR-10 images written as files: sizes, formats and channel counts
# vary with the index, as in a folder of photos people collected.
_VARIANTS = [
    ("png", None, None),
    ("jpg", (48, 40), None),
    ("png", (64, 64), "L"),
    ("png", (40, 56), "RGBA"),
    ("jpeg", (96, 72), None),
    ("bmp", None, None),
    ("gif", (36, 36), None),
    ("JPG", None, "L"),
]


def write_image_files(folder, images, prefix="img"):
  """Writes the images into `folder` in the rotating _VARIANTS; returns the paths."""
  paths = []
  for i, image in enumerate(images):
    ext, size, mode = _VARIANTS[i % len(_VARIANTS)]
    paths.append(save_image(image, os.path.join(folder, f"{prefix}{i:04d}.{ext}"), size, mode))
  return paths


IMAGE_FOLDER_CLASSES = (0, 3, 8)  # airplane, cat, ship


@pytest.fixture(scope="session")
def photo_folder(cifar10_sample, tmp_path_factory):
  """<root>/<class>/<image> of real CIFAR-10 images of three classes (train and
  test sample together, ~130 files) in several sizes and formats, grayscale and
  RGBA among them, plus a corrupt JPEG, a .DS_Store and a README.txt; and an
  unlabeled folder (nested) of images of the other classes."""
  (train, train_labels), (test, test_labels) = cifar10_sample
  images = np.concatenate([train, test])
  labels = np.concatenate([train_labels, test_labels])
  names_ = cifar10_class_names()
  root = tmp_path_factory.mktemp("image_folder") / "photos"
  for c in IMAGE_FOLDER_CLASSES:
    write_image_files(str(root / names_[c]), images[labels == c])
  with open(root / names_[3] / "broken.jpg", "wb") as f:  # a truncated JPEG
    f.write(jpeg_bytes(images[0], size=(64, 64))[:300])
  (root / names_[0] / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  (root / "README.txt").write_text("photos sorted by class\n")
  (root / names_[8] / "notes.txt").write_text("not an image\n")
  unlabeled = tmp_path_factory.mktemp("unlabeled") / "more_photos"
  others = images[~np.isin(labels, IMAGE_FOLDER_CLASSES)][:64]
  write_image_files(str(unlabeled / "a"), others[:32], "u")
  write_image_files(str(unlabeled / "b" / "deeper"), others[32:], "v")
  (unlabeled / ".hidden").mkdir()
  save_image(others[0], str(unlabeled / ".hidden" / "skip_me.png"))
  return str(root), str(unlabeled)


def raw_feature_spec():
  """The raw feature spec the curated schema gives (what Transform parses)."""
  from tensorflow_transform.tf_metadata import schema_utils
  from tfx.utils import io_utils
  from tensorflow_metadata.proto.v0 import schema_pb2

  schema = io_utils.parse_pbtxt_file(names.SCHEMA_PATH, schema_pb2.Schema())
  return schema_utils.schema_as_feature_spec(schema).feature_spec


def analyze_and_write_transform(images, labels, out_dir):
  """Runs the real preprocessing_fn through tf.Transform on Beam; returns
  the TFTransformOutput written to `out_dir`."""
  import apache_beam as beam
  import tensorflow_transform as tft
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
  from models.preprocessing import preprocessing_fn

  from models.examples import ImageStatistics

  metadata = dataset_metadata.DatasetMetadata.from_feature_spec(raw_feature_spec())
  class_names = cifar10_class_names()

  def row(image, label):  # what ExampleGen writes of one image
    stats = ImageStatistics.of_array(image)
    return {
        "image": [png_bytes(image)],
        "label": [int(label)],
        "class_name": [class_names[int(label)].encode()],
        names.IMAGE_HEIGHT_KEY: [stats.height],
        names.IMAGE_WIDTH_KEY: [stats.width],
        **{key: [mean] for key, mean in zip(names.CHANNEL_MEAN_KEYS, stats.channel_means)},
    }

  rows = [row(img, lab) for img, lab in zip(images, labels)]
  with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp")):
    raw = p | beam.Create(rows)
    transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
    _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
  # Raw metadata, as TFX's Transform writes it (serving signatures parse with it).
  metadata_io.write_metadata(
      metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
  )
  return tft.TFTransformOutput(out_dir)


@pytest.fixture(scope="session")
def transform_output(cifar10_sample, tmp_path_factory):
  """A Transform graph analysed on 64 real training images."""
  (images, labels), _ = cifar10_sample
  out = str(tmp_path_factory.mktemp("transform"))
  return analyze_and_write_transform(images[:64], labels[:64], out)


def run_pipeline_process(argv, timeout: float = 1800) -> subprocess.CompletedProcess:
  """`python -m pipeline.local_runner ARGV` as `make pipeline` or a scheduled
  job starts it: its own process, its run log filtered as by default; stdout
  (the report) and stderr (the run log) captured."""
  env = {k: v for k, v in os.environ.items() if k != run_log.VERBOSE_ENV}
  return subprocess.run(
      [sys.executable, "-m", "pipeline.local_runner", *argv],
      cwd=names.PROJECT_DIR,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def pipeline_config_of(argv):
  """The PipelineConfig `python -m pipeline.local_runner ARGV` runs."""
  from pipeline import local_runner

  args = local_runner.parse_args(argv)
  return local_runner.pipeline_config(args, local_runner.overrides_from_args(args))


def served_versions(config) -> List[str]:
  """The versions pushed into `config`'s serving folder, oldest first ([]
  before the first push)."""
  if not os.path.isdir(config.serving_model_dir):
    return []
  return [str(v) for v in names.pushed_versions(os.listdir(config.serving_model_dir))]


SMOKE_LOG = "smoke_run.log"  # beside the smoke run's output folder: its stderr
_SMOKE_RUN_DONE = "smoke_run.json"  # ... and its command line and exit code


def session_dir(tmp_path_factory) -> pathlib.Path:
  """This test session's folder, shared by its pytest-xdist workers (each
  worker's own temporary folders are below it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def smoke_run(small_cifar_dir, tmp_path_factory):
  """The real pipeline on the small sample, run as `make pipeline
  PROFILE=smoke` runs it (`run_pipeline_process`); returns its
  PipelineConfig. Its stderr, the run log, is kept in SMOKE_LOG beside the
  output folder (`smoke_run_log`).

  Made once a session: the first pytest-xdist worker to need it runs it,
  holding a lock the others wait on, then every worker reads it. So no test
  changes it: a test that runs the pipeline again on a run's outputs does so
  on a run of its own."""
  import fcntl
  import json

  folder = session_dir(tmp_path_factory) / "smoke_run"
  folder.mkdir(exist_ok=True)
  with open(folder / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not (folder / _SMOKE_RUN_DONE).exists():
      argv = [
          "--profile", "smoke", "--data", small_cifar_dir, "--output-dir", str(folder / "outputs")
      ]  # fmt: skip
      run = run_pipeline_process(argv)
      (folder / SMOKE_LOG).write_text(run.stderr)
      (folder / "report.txt").write_text(run.stdout)
      (folder / _SMOKE_RUN_DONE).write_text(json.dumps({"argv": argv, "exit": run.returncode}))
    done = json.loads((folder / _SMOKE_RUN_DONE).read_text())
  if done["exit"]:
    log = (folder / SMOKE_LOG).read_text()
    pytest.fail(f"the smoke pipeline run failed ({done['exit']}):\n{log[-5000:]}")
  return pipeline_config_of(done["argv"])


@pytest.fixture(scope="session")
def smoke_run_log(smoke_run):
  """(stderr, stdout) of the smoke run: its run log and its report."""
  folder = os.path.dirname(smoke_run.output_dir)
  with (
      open(os.path.join(folder, SMOKE_LOG)) as log,
      open(os.path.join(folder, "report.txt")) as report,
  ):
    return log.read(), report.read()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  """A failed test's captured output without the known-harmless lines
  (`models.run_log.HARMLESS`), as on the command line."""
  outcome = yield
  report = outcome.get_result()
  report.sections = run_log.filter_report_sections(report.sections)


@pytest.fixture(scope="module")
def model_base(smoke_run, tmp_path_factory):
  """A copy of the smoke run's pushed versions, one per test module (the
  serving tests push more into it)."""
  import shutil

  base = tmp_path_factory.mktemp("models") / "mae-tfx"
  # Not a push in flight (a test leaves one there for a while: report_page).
  shutil.copytree(smoke_run.serving_model_dir, base, ignore=shutil.ignore_patterns(".staging-*"))
  return str(base)


def export_random_classifier(tf_transform_output, export_dir, feature_blocks=1, seed=0):
  """A randomly initialised smoke-size encoder + probe head exported with the
  real serving signatures; returns the ProbeClassifier."""
  import tensorflow as tf
  from models import config as config_lib
  from models.linear_probe import ProbeClassifier, build_probe_head
  from models.joint_embedding import build_mae
  from models.signatures import export_saved_model

  tf.keras.utils.set_random_seed(seed)
  cfg = config_lib.get_profile("smoke").model
  class_names = cifar10_class_names()
  dim = cfg.embed_dim * feature_blocks
  classifier = ProbeClassifier(
      build_mae(cfg).encoder,
      build_probe_head(dim, len(class_names)),
      class_names,
      feature_blocks,
  )
  rng = np.random.default_rng(seed)  # a k-NN bank of 40 random embeddings
  classifier.set_knn_bank(rng.normal(size=(40, dim)), rng.integers(0, 10, 40), k=20)
  export_saved_model(classifier, tf_transform_output, str(export_dir))
  return classifier


def write_examples(path, images, labels):
  """Writes GZIP TFRecords of {image: PNG, label, class_name} tf.Examples, as
  ExampleGen does."""
  from models.examples import image_example

  class_names = cifar10_class_names()
  with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
    for image, label in zip(images, labels):
      writer.write(
          image_example(png_bytes(image), int(label), class_names[int(label)]).SerializeToString()
      )
  return [str(path)]


@pytest.fixture(scope="session")
def example_files(cifar10_sample, tmp_path_factory):
  """([train file], [test file]) of the real sample, as ExampleGen writes them."""
  (train, train_labels), (test, test_labels) = cifar10_sample
  root = tmp_path_factory.mktemp("examples")
  return (
      write_examples(root / "train.gz", train, train_labels),
      write_examples(root / "test.gz", test, test_labels),
  )


# ---- Tiers -----------------------------------------------------------------
# A test that uses any of these fixtures reads a smoke run's outputs, so it is
# marked `pipeline` (modules that run pipelines of their own say so with
# `pytestmark`).
SMOKE_RUN_FIXTURES = frozenset({"smoke_run", "smoke_run_log", "model_base"})


# The files that take minutes (`make test` prints the slowest tests), which
# start first: pytest-xdist hands out whole files in collection order, and a
# worker left alone with one of them at the end would double its time.
LONGEST_FIRST = ("test_spans_e2e", "test_benchmarks", "test_image_sources_e2e", "test_serving")


def pytest_collection_modifyitems(items):
  """Marks the smoke run's readers `pipeline`; puts LONGEST_FIRST first."""
  for item in items:
    if SMOKE_RUN_FIXTURES.intersection(item.fixturenames):
      item.add_marker(pytest.mark.pipeline)

  def rank(item):
    name = item.module.__name__.rsplit(".", 1)[-1]
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: each file's tests keep their order
