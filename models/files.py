"""Writing files so that a reader never sees half of one, and copying a
folder (local or GCS)."""

import json
import os

import tensorflow as tf


def write_atomically(path: str, contents) -> None:
  """Writes `contents` (str or bytes) to `path`, local or GCS, through a
  temporary name in the same folder, so a reader never sees half a file and
  a failed write leaves the old file (if any) as it was."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with tf.io.gfile.GFile(tmp, "wb" if isinstance(contents, bytes) else "w") as f:
      f.write(contents)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise


def write_json(obj, path: str) -> None:
  """Writes `obj` to `path` as indented JSON, atomically; values JSON has no
  type for (numpy scalars) are written as floats."""
  write_atomically(path, json.dumps(obj, indent=2, default=float))


def copy_tree(source: str, destination: str) -> None:
  """Copies the files under `source` to `destination` (local or GCS)."""
  for folder, _, names in tf.io.gfile.walk(source):
    target = os.path.join(destination, os.path.relpath(folder, source))
    tf.io.gfile.makedirs(target)
    for name in names:
      tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name), overwrite=True)
