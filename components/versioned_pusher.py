"""A Pusher that never overwrites or mislabels a pushed version.

TFX's filesystem Pusher names the version by the current second and, when
that directory already exists, skips the copy but still records the push as
done, pointing at someone else's model. This executor takes the next free
version number instead (`max(now, newest + 1)`), copies into a hidden
staging directory and renames it into place, so a model server polling
`<base>/<version>/` (TF Serving layout) never sees a half-copied model.
A model identical to the newest version (same SavedModel fingerprint) is
not pushed again. A staging directory a killed push left behind is removed
by the next push.
"""

import os
import time
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils
from tfx.v1.components import Pusher

from models.names import pushed_versions


def _fingerprint(saved_model_dir: str) -> Optional[bytes]:
  """The SavedModel's fingerprint.pb (hashes of graph and variables), if any."""
  path = os.path.join(saved_model_dir, "fingerprint.pb")
  if not fileio.exists(path):
    return None
  with fileio.open(path, "rb") as f:
    return f.read()


def newest_version(base_directory: str) -> Optional[str]:
  versions = pushed_versions(fileio.listdir(base_directory)
                             if fileio.exists(base_directory) else [])
  return str(versions[-1]) if versions else None


def next_version(base_directory: str, now: int) -> int:
  """A version number newer than every version already in `base_directory`."""
  newest = newest_version(base_directory)
  return max(now, int(newest) + 1) if newest else now


STAGING_PREFIX = ".staging-"     # .staging-<version>-<pid>


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:     # someone else's process
    return True
  return True


def remove_stale_staging(base_directory: str) -> List[str]:
  """Removes the staging directories of pushes whose process is gone (a
  push killed mid-copy); returns their names. On a local filesystem only:
  a process id means nothing across the machines sharing a bucket."""
  if "://" in base_directory or not os.path.isdir(base_directory):
    return []
  removed = []
  for name in sorted(os.listdir(base_directory)):
    pid = name.rsplit("-", 1)[-1]
    if name.startswith(STAGING_PREFIX) and pid.isdigit() and not _process_alive(int(pid)):
      io_utils.delete_dir(os.path.join(base_directory, name))
      logging.warning("Removed %s, left by a push that did not finish", name)
      removed.append(name)
  return removed


def push_to_filesystem(model_path: str, base_directory: str) -> str:
  """Copies `model_path` to `<base>/<new version>` atomically; returns it.

  When the newest version already is this very model (same SavedModel
  fingerprint, e.g. a re-run whose Evaluator re-blessed the same model
  against itself), nothing is copied and that version is returned.
  """
  fileio.makedirs(base_directory)
  remove_stale_staging(base_directory)
  newest = newest_version(base_directory)
  fingerprint = _fingerprint(model_path)
  if (newest and fingerprint is not None and
      _fingerprint(os.path.join(base_directory, newest)) == fingerprint):
    logging.info("Model %s is already served as version %s", model_path, newest)
    return newest
  version = str(next_version(base_directory, int(time.time())))
  staging = os.path.join(base_directory, f"{STAGING_PREFIX}{version}-{os.getpid()}")
  io_utils.copy_dir(model_path, staging)
  fileio.rename(staging, os.path.join(base_directory, version), overwrite=False)
  return version


class Executor(pusher_executor.Executor):
  """Filesystem push with fresh, atomic versions."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
        destination)
    if destination.WhichOneof("destination") != "filesystem":
      raise ValueError("VersionedPusher pushes to a filesystem destination "
                       f"only, got {destination.WhichOneof('destination')}")
    model_path = self.GetModelPath(input_dict)
    base = destination.filesystem.base_directory
    version = push_to_filesystem(model_path, base)
    io_utils.copy_dir(model_path, model_push.uri)
    self._MarkPushed(model_push, pushed_destination=os.path.join(base, version),
                     pushed_version=version)
    logging.info("Model pushed to %s", os.path.join(base, version))


def VersionedPusher(model, model_blessing, base_directory: str) -> Pusher:  # pylint: disable=invalid-name
  """A Pusher component using `Executor`."""
  return Pusher(
      model=model, model_blessing=model_blessing,
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=base_directory)),
      custom_executor_spec=executor_spec.ExecutorClassSpec(Executor))
