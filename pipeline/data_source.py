"""Finds or fetches CIFAR-10 in the official "python version" layout.

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

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
REQUIRED_FILES = ["batches.meta", "test_batch"] + [
    f"data_batch_{i}" for i in range(1, 6)]


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
  missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise DataSourceError(f"{path} is not a complete CIFAR-10 python folder: "
                          f"missing {missing}")
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
    raise DataSourceError(f"Downloaded {OFFICIAL_URL} has md5 {md5}, "
                          f"expected {OFFICIAL_MD5}")
  os.replace(partial, path)
  return path


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
  parts = sorted(os.path.join(source, f) for f in os.listdir(source)
                 if ".tar.gz.part-" in f)
  if parts:
    return _extract(parts, cache_dir)
  archives = [os.path.join(source, f) for f in os.listdir(source)
              if f.endswith(".tar.gz")]
  if len(archives) == 1:
    return _extract(archives, cache_dir)
  raise DataSourceError(
      f"{source} holds no CIFAR-10 data: expected {BATCHES_DIR}/, its batch "
      "files, a .tar.gz archive or its .tar.gz.part-* pieces")
