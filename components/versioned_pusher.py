"""A Pusher that never overwrites or mislabels a pushed version.

TFX's filesystem Pusher names the version by the current second and, when
that directory already exists, skips the copy but still records the push as
done, pointing at someone else's model. This executor takes the next free
version number instead (`max(now, newest + 1)`), copies into a hidden
staging directory and renames it into place, so a model server polling
`<base>/<version>/` (TF Serving layout) never sees a half-copied model.
The search index (SearchIndexer's) goes into the same staging folder, at
names.SEARCH_INDEX_DIR, so model and index land together; an index that was
not blessed stops the push. When the model was not blessed but the index
was made by the served version (an index-only update: a span the gate did
not bless still becomes searchable, removals take effect), that version's
SavedModel is pushed again, unchanged (hard-linked where the filesystem
allows), with the new index. A model identical to the newest version (same
SavedModel fingerprint and index records) is not pushed again. A staging
directory a killed push left behind is removed by the next push.

Once a version is pushed, TensorBoard's Embedding Projector files of its
search index (a sample of its vectors, their ids, classes and spans, a
sprite of their thumbnails) replace the previous push's in the folder
custom_config names (names.projector_dir: in the pipeline root, beside the
Trainers' logs); nothing pushed, none written.
"""

import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types import channel as tfx_channel
from tfx.types.component_spec import ChannelParameter
from tfx.utils import io_utils, proto_utils

from components import search_index_gen
from models import projector, search_index
from models.names import (
    PROJECTOR_PROPERTY,
    PROJECTOR_SUMMARY_PROPERTY,
    SEARCH_INDEX_DIR,
    STAGING_PREFIX,
    pushed_versions,
)


def _fingerprint(saved_model_dir: str) -> Optional[bytes]:
  """The SavedModel's fingerprint.pb (hashes of graph and variables), if any."""
  path = os.path.join(saved_model_dir, "fingerprint.pb")
  if not fileio.exists(path):
    return None
  with fileio.open(path, "rb") as f:
    return f.read()


def newest_version(base_directory: str) -> Optional[str]:
  """The newest pushed version in `base_directory`, or None when it has none."""
  versions = pushed_versions(
      fileio.listdir(base_directory) if fileio.exists(base_directory) else []
  )
  return str(versions[-1]) if versions else None


def next_version(base_directory: str, now: int) -> int:
  """A version number newer than every version already in `base_directory`."""
  newest = newest_version(base_directory)
  return max(now, int(newest) + 1) if newest else now


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
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


def _index_records(index_dir: Optional[str]) -> Optional[Tuple]:
  """What the search index in `index_dir` holds, if there is one: its
  records (ids, class names, spans) and removed ids, to tell a new corpus
  from the same one (by content: np.savez stamps each save's time)."""
  path = index_dir and os.path.join(index_dir, search_index.RECORDS)
  if not path or not fileio.exists(path):
    return None
  records = search_index.read_records(index_dir)
  return (
      tuple(records.ids.tolist()),
      tuple(records.class_names.tolist()),
      tuple(records.spans.tolist()),
      tuple(search_index.read_removed(index_dir)),
  )


def same_saved_model(a: str, b: str) -> bool:
  """Whether two SavedModel folders hold the same model (their fingerprint.pb)."""
  fingerprint = _fingerprint(a)
  return fingerprint is not None and _fingerprint(b) == fingerprint


def same_version(version_dir: str, model_path: str, index_path: Optional[str]) -> bool:
  """Whether the pushed version in `version_dir` already is this model (its
  SavedModel fingerprint) with this index's records."""
  return same_saved_model(model_path, version_dir) and _index_records(
      os.path.join(version_dir, SEARCH_INDEX_DIR)
  ) == _index_records(index_path)


def _link_tree(source: str, target: str, leave_out: str) -> None:
  """`source`'s files at `target`, hard links where the filesystem allows
  (copies otherwise), without its top-level `leave_out` entry."""
  if "://" in source or "://" in target:
    io_utils.copy_dir(source, target)
    if fileio.exists(os.path.join(target, leave_out)):
      io_utils.delete_dir(os.path.join(target, leave_out))
    return
  for folder, dirs, files in os.walk(source):
    if folder == source and leave_out in dirs:
      dirs.remove(leave_out)
    destination = os.path.join(target, os.path.relpath(folder, source))
    os.makedirs(destination, exist_ok=True)
    for name in files:
      try:
        os.link(os.path.join(folder, name), os.path.join(destination, name))
      except OSError:
        shutil.copy2(os.path.join(folder, name), os.path.join(destination, name))


def push_to_filesystem(
    model_path: str,
    base_directory: str,
    index_path: Optional[str] = None,
    link: bool = False,
) -> str:
  """Copies `model_path`, with the search index at `index_path` inside it
  (names.SEARCH_INDEX_DIR), to `<base>/<new version>` atomically: model and
  index appear together or not at all. Returns the version.

  When the newest version already is this very model with the same corpus
  (same SavedModel fingerprint and index records, e.g. a re-run whose
  Evaluator re-blessed the same model against itself), nothing is copied
  and that version is returned. With `link`, `model_path` is a pushed
  version folder whose SavedModel is pushed again as it is (hard links),
  its own index left behind.
  """
  fileio.makedirs(base_directory)
  remove_stale_staging(base_directory)
  newest = newest_version(base_directory)
  if newest and same_version(os.path.join(base_directory, newest), model_path, index_path):
    logging.info("Model %s is already served as version %s", model_path, newest)
    return newest
  version = str(next_version(base_directory, int(time.time())))
  staging = os.path.join(base_directory, f"{STAGING_PREFIX}{version}-{os.getpid()}")
  if link:
    _link_tree(model_path, staging, SEARCH_INDEX_DIR)
  else:
    io_utils.copy_dir(model_path, staging)
  if index_path:
    io_utils.copy_dir(index_path, os.path.join(staging, SEARCH_INDEX_DIR))
  fileio.rename(staging, os.path.join(base_directory, version), overwrite=False)
  return version


def write_projector(model_push: types.Artifact, version_dir: str, custom_config: Dict) -> None:
  """The Embedding Projector files of the search index pushed in
  `version_dir` (`models.projector.publish`), in custom_config's
  PROJECTOR_DIR_KEY, at most its PROJECTOR_POINTS_KEY vectors (0 or
  absent: none); `model_push` records where and what."""
  points = int(custom_config.get(PROJECTOR_POINTS_KEY) or 0)
  folder = custom_config.get(PROJECTOR_DIR_KEY)
  index_dir = os.path.join(version_dir, SEARCH_INDEX_DIR)
  if not points or not folder:
    model_push.set_string_custom_property(
        PROJECTOR_SUMMARY_PROPERTY, "off (search.projector_points 0)"
    )
    return
  if not fileio.exists(os.path.join(index_dir, search_index.RECORDS)):
    model_push.set_string_custom_property(
        PROJECTOR_SUMMARY_PROPERTY, "none: no search index pushed"
    )
    return
  base, version = os.path.split(version_dir.rstrip("/"))
  written = projector.publish(
      folder, version, index_dir, points, title=f"{os.path.basename(base)} version {version}"
  )
  summary = projector.describe(written)
  model_push.set_string_custom_property(PROJECTOR_PROPERTY, written["folder"])
  model_push.set_string_custom_property(PROJECTOR_SUMMARY_PROPERTY, summary)
  logging.info("Embedding Projector files of version %s in %s: %s", version, folder, summary)


class Executor(pusher_executor.Executor):
  """Filesystem push with fresh, atomic versions, the search index inside."""

  def Do(
      self,
      input_dict: Dict[str, List[types.Artifact]],
      output_dict: Dict[str, List[types.Artifact]],
      exec_properties: Dict[str, Any],
  ) -> None:
    """Pushes the blessed model, and its search index when given and blessed,
    as a new version (`push_to_filesystem`); otherwise marks it not pushed."""
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY]
    )
    model_blessed = self.CheckBlessing(input_dict)
    index_path, index_only_model = None, None
    if input_dict.get(SEARCH_INDEX_KEY):
      index = artifact_utils.get_single_instance(input_dict[SEARCH_INDEX_KEY])
      if not search_index_gen.is_blessed(index):
        logging.warning(
            "The search index was not blessed (%s): nothing pushed",
            index.get_string_custom_property("reason"),
        )
        model_push.set_string_custom_property(
            NOT_PUSHED_REASON,
            "the search index was not blessed: " + index.get_string_custom_property("summary"),
        )
        self._MarkNotPushed(model_push)
        return
      index_path = os.path.join(index.uri, search_index_gen.INDEX_FOLDER)
      if search_index_gen.is_blessed(index, "index_only"):
        index_only_model = index.get_string_custom_property("model_path")
    if not model_blessed and not index_only_model:
      self._MarkNotPushed(model_push)
      return
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination
    )
    if destination.WhichOneof("destination") != "filesystem":
      raise ValueError(
          "VersionedPusher pushes to a filesystem destination "
          f"only, got {destination.WhichOneof('destination')}"
      )
    base = destination.filesystem.base_directory
    custom_config = (
        json.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
    )
    if index_only_model:
      # The served version again, with the index extended (or trimmed); the
      # newest version back when it already holds this very index.
      newest = newest_version(base)
      version = push_to_filesystem(index_only_model, base, index_path, link=True)
      if version == newest:
        model_push.set_string_custom_property(
            NOT_PUSHED_REASON,
            "the model was not blessed, and the served version already searches every "
            "image accepted",
        )
        self._MarkNotPushed(model_push)
        return
      model_push.set_int_custom_property("index_only", 1)
      model_push.set_string_custom_property("model_from", index_only_model)
      logging.info(
          "Search index pushed to %s with the served model of %s (index-only version)",
          os.path.join(base, version),
          index_only_model,
      )
    else:
      model_path = self.GetModelPath(input_dict)
      version = push_to_filesystem(model_path, base, index_path)
      io_utils.copy_dir(model_path, model_push.uri)
      logging.info("Model pushed to %s", os.path.join(base, version))
    try:
      write_projector(model_push, os.path.join(base, version), custom_config)
    except (OSError, ValueError, tf.errors.OpError) as e:
      # The version is live: a view of it that could not be written is
      # reported, not a failed push (the next push writes it again).
      logging.error("Embedding Projector files of version %s not written: %s", version, e)
      model_push.set_string_custom_property(PROJECTOR_SUMMARY_PROPERTY, f"not written: {e}")
    self._MarkPushed(
        model_push, pushed_destination=os.path.join(base, version), pushed_version=version
    )


SEARCH_INDEX_KEY = "search_index"
NOT_PUSHED_REASON = "not_pushed_reason"
# custom_config: where the projector files go, and how many vectors at most.
PROJECTOR_DIR_KEY, PROJECTOR_POINTS_KEY = "projector_dir", "projector_points"


class VersionedPusherSpec(standard_component_specs.PusherSpec):
  """TFX's PusherSpec with an optional `search_index` input (SearchIndexer's)."""

  INPUTS = {
      **standard_component_specs.PusherSpec.INPUTS,
      SEARCH_INDEX_KEY: ChannelParameter(type=search_index_gen.SearchIndex, optional=True),
  }


class VersionedPusherComponent(base_component.BaseComponent):
  """TFX's Pusher with a search index input, run by this module's Executor."""

  SPEC_CLASS = VersionedPusherSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)


def VersionedPusher(  # pylint: disable=invalid-name
    model,
    model_blessing,
    base_directory: str,
    search_index=None,
    projector_dir: str = "",
    projector_points: int = 0,
) -> VersionedPusherComponent:
  """The pipeline's Pusher (node id "Pusher"): the model, and its search
  index when given, to a new version under `base_directory`; the Embedding
  Projector files of at most `projector_points` of the index's vectors
  into `projector_dir` (0: none)."""
  return VersionedPusherComponent(
      spec=VersionedPusherSpec(
          model=model,
          model_blessing=model_blessing,
          search_index=search_index,
          push_destination=pusher_pb2.PushDestination(
              filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base_directory)
          ),
          custom_config=json.dumps(
              {PROJECTOR_DIR_KEY: projector_dir, PROJECTOR_POINTS_KEY: projector_points}
          ),
          pushed_model=tfx_channel.Channel(type=standard_artifacts.PushedModel),
      )
  ).with_id("Pusher")
