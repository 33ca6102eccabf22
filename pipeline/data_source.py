"""What `--data` points at, and CIFAR-10 found or fetched.

`detect_format(path)` tells the three sources apart by what is there:
  cifar10        the CIFAR-10 python layout, its .tar.gz or the .part-* pieces;
  tfrecord       TFRecord files of tf.Example (*.tfrecord*, *.tfrec*), in
                 <root>/ or in <root>/train/ + <root>/test/;
  image_folder   class folders of images (models/image_files.py);
and either of the last two laid out in spans, <root>/span-<N>/ (`span_of`).

`resolve_cifar10(source, cache_dir)` returns a `cifar-10-batches-py/` folder
for Cifar10ExampleGen's `input_base`. `source` may be:

  None / ""                    download the official archive once into
                               `cache_dir` (md5 checked), then extract it;
  a `cifar-10-batches-py/` dir (or a folder holding one) used in place;
  a `.tar.gz` archive          extracted into `cache_dir`;
  a folder of `*.part-a?`      the split archive (as in ../shared/data/cifar10):
                               joined, then extracted into `cache_dir`.

Extraction goes to a staging directory renamed into place at the end, so an
interrupted run never leaves a half-extracted folder that looks complete.
"""

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from typing import List, Optional

from models import cifar10, names

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
REQUIRED_FILES = ["batches.meta", cifar10.TEST_BATCH, *cifar10.TRAIN_BATCHES]


class DataSourceError(RuntimeError):
  """The CIFAR-10 source is missing, incomplete or corrupt."""


def _digest(paths: List[str], algorithm: str) -> str:
  h = hashlib.new(algorithm)
  for path in paths:
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()


def check_batches_dir(path: str) -> str:
  """Returns `path` if it holds every CIFAR-10 batch file, else raises naming those missing."""
  missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise DataSourceError(f"{path} is not a complete CIFAR-10 python folder: missing {missing}")
  return path


def _extract(archive_parts: List[str], cache_dir: str) -> str:
  """Extracts the (possibly split) tar.gz into cache_dir/<sha>/; idempotent."""
  key = _digest(archive_parts, "sha256")[:16]
  target = os.path.join(cache_dir, f"cifar10-{key}")
  if os.path.isdir(target):
    return check_batches_dir(os.path.join(target, BATCHES_DIR))
  os.makedirs(cache_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".extract-", dir=cache_dir)
  try:
    with tempfile.TemporaryFile(dir=cache_dir) as joined:
      for part in archive_parts:
        with open(part, "rb") as f:
          shutil.copyfileobj(f, joined)
      joined.seek(0)
      try:
        with tarfile.open(fileobj=joined, mode="r:gz") as tar:
          tar.extractall(staging, filter="data")
      except (tarfile.TarError, EOFError, OSError) as e:
        raise DataSourceError(
            f"{', '.join(archive_parts)}: not a readable CIFAR-10 tar.gz "
            f"({type(e).__name__}: {e}); the archive is truncated or corrupt"
        ) from e
    check_batches_dir(os.path.join(staging, BATCHES_DIR))
    os.rename(staging, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return os.path.join(target, BATCHES_DIR)


def download_official(cache_dir: str) -> str:
  """Downloads the official archive once (md5 checked); returns its path."""
  path = os.path.join(cache_dir, "cifar-10-python.tar.gz")
  if os.path.isfile(path) and _digest([path], "md5") == OFFICIAL_MD5:
    return path
  os.makedirs(cache_dir, exist_ok=True)
  partial = path + ".partial"
  print(f"Downloading {OFFICIAL_URL} to {path} ...", flush=True)
  urllib.request.urlretrieve(OFFICIAL_URL, partial)
  md5 = _digest([partial], "md5")
  if md5 != OFFICIAL_MD5:
    os.remove(partial)
    raise DataSourceError(f"Downloaded {OFFICIAL_URL} has md5 {md5}, expected {OFFICIAL_MD5}")
  os.replace(partial, path)
  return path


CIFAR10, IMAGE_FOLDER, TFRECORD = "cifar10", "image_folder", "tfrecord"
FORMATS = (CIFAR10, IMAGE_FOLDER, TFRECORD)


def _is_cifar10(source: str) -> bool:
  if os.path.isfile(source):
    return ".tar.gz" in os.path.basename(source)
  entries = os.listdir(source)
  return (
      os.path.isfile(os.path.join(source, "data_batch_1"))
      or os.path.isdir(os.path.join(source, BATCHES_DIR))
      or any(".tar.gz" in f for f in entries)
  )


def detect_format(source: str) -> str:
  """cifar10, tfrecord or image_folder for a local path (see the module doc)."""
  source = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(source):
    raise DataSourceError(f"data source {source} does not exist")
  from models import image_files

  spans = image_files.span_folders(source)
  if spans:  # the newest span says what the source holds
    newest = image_files.span_root(source, max(spans))
    data_format = detect_format(newest)
    if data_format == CIFAR10:
      raise DataSourceError(f"{newest}: CIFAR-10 is one span; give its folder itself")
    return data_format
  if _is_cifar10(source):
    return CIFAR10
  from models.examples import tfrecord_files

  if os.path.isdir(source) and (
      tfrecord_files(source)
      or (
          tfrecord_files(os.path.join(source, "train"))
          and tfrecord_files(os.path.join(source, "test"))
      )
  ):
    return TFRECORD
  if os.path.isdir(source):
    return IMAGE_FOLDER
  raise DataSourceError(
      f"{source}: not a data source: expected the CIFAR-10 archive or folder, a "
      "folder of TFRecord files, or a folder of class folders of images"
  )


def span_of(source: str, span: Optional[int]) -> Optional[int]:
  """The span a run of `source` ingests: `span` when given, else the
  newest; None when the source is not laid out in span-<N>/ folders (a
  given `span` is then an error, as is one the source does not have)."""
  from models import image_files

  spans = image_files.span_folders(source)
  if not spans:
    if span is not None:
      raise DataSourceError(
          f"--span {span}: {source} is not laid out in spans "
          f"({names.SPAN_FOLDER_PREFIX}<N>/ folders)"
      )
    return None
  chosen = max(spans) if span is None else span
  image_files.span_root(source, chosen)  # raises naming the spans there
  return chosen


def resolve_cifar10(source: Optional[str], cache_dir: str) -> str:
  """Returns an extracted `cifar-10-batches-py/` folder for `source`."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  if not source:
    return _extract([download_official(cache_dir)], cache_dir)
  source = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(source):
    raise DataSourceError(f"CIFAR-10 source {source} does not exist")
  if os.path.isfile(source):
    return _extract([source], cache_dir)
  if os.path.isfile(os.path.join(source, "data_batch_1")):
    return check_batches_dir(source)
  if os.path.isdir(os.path.join(source, BATCHES_DIR)):
    return check_batches_dir(os.path.join(source, BATCHES_DIR))
  parts = sorted(os.path.join(source, f) for f in os.listdir(source) if ".tar.gz.part-" in f)
  if parts:
    return _extract(parts, cache_dir)
  archives = [os.path.join(source, f) for f in os.listdir(source) if f.endswith(".tar.gz")]
  if len(archives) == 1:
    return _extract(archives, cache_dir)
  raise DataSourceError(
      f"{source} holds no CIFAR-10 data: expected {BATCHES_DIR}/, its batch "
      "files, a .tar.gz archive or its .tar.gz.part-* pieces"
  )


def _tfrecord_label_ids(root: str, label_feature: str) -> List[int]:
  """The distinct int64 class ids in the TFRecords under `root` (a pass that
  parses only the label)."""
  import tensorflow as tf
  from models.examples import tfrecord_files

  files = [
      f
      for d in (root, os.path.join(root, "train"), os.path.join(root, "test"))
      for f in tfrecord_files(d)
  ]
  spec = {label_feature: tf.io.VarLenFeature(tf.int64)}  # the same for every file
  ids = set()
  for path in files:
    records = tf.data.TFRecordDataset(
        path, compression_type="GZIP" if path.lower().endswith(".gz") else ""
    )
    for batch in records.batch(4096).map(lambda s: tf.io.parse_example(s, spec)):
      ids.update(int(v) for v in batch[label_feature].values.numpy())
  return sorted(ids)


def class_names(
    source: str, data_format: str, test_fraction: float = 0.2, label_feature: str = "label"
) -> List[str]:
  """The class names (id order) of a local labeled source, as its ExampleGen
  will number them: the train split's class folders; for TFRecords the lines
  of class_names.txt, or the ids found (0 .. max) as names."""
  from models import image_files

  if data_format == IMAGE_FOLDER:
    return image_files.detect_layout(source, test_fraction).class_names
  if data_format == TFRECORD:
    found = image_files.read_class_names_file(source)
    if found:
      return found
    ids = _tfrecord_label_ids(source, label_feature)
    if not ids:
      raise DataSourceError(
          f"{source}: no record has an int64 '{label_feature}' feature (set --label-feature)"
      )
    return [str(i) for i in range(max(ids) + 1)]
  raise ValueError(f"{data_format}: the curated CIFAR-10 schema names its classes")


def dataset_schema_path(source: str) -> str:
  """Where the schema of a dataset other than CIFAR-10 is written for review
  (and read back by later runs): schemas/<folder name>/schema.pbtxt."""
  name = os.path.basename(os.path.normpath(source)) or "dataset"
  return os.path.join(names.PROJECT_DIR, "schemas", name, "schema.pbtxt")


def ensure_schema(
    source: str,
    data_format: str,
    schema_path: str,
    test_fraction: float,
    label_feature: str = "label",
) -> bool:
  """Writes the dataset's schema to `schema_path` unless one is there (a
  reviewed schema is never overwritten); returns whether it wrote one."""
  from models import schema

  if os.path.exists(schema_path):
    return False
  classes = class_names(source, data_format, test_fraction, label_feature)
  os.makedirs(os.path.dirname(schema_path), exist_ok=True)
  schema.write_schema(
      schema.dataset_schema(classes),
      schema_path,
      header=(
          f"Schema of {source}, generated from its data by mae-tfx ({len(classes)} classes).\n"
          "Review it and check it in: ExampleValidator holds every run of this dataset\n"
          "to it. The class_name domain lists the classes in id order (label i is the\n"
          "i-th name); a class added to the data later is an anomaly until it is added here."
      ),
  )
  return True
