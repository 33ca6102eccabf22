"""AnomaliesGate: fails the pipeline when ExampleValidator found anomalies.

ExampleValidator only records anomalies; TFX goes on to Transform and the
Trainers regardless. This component reads every split's anomalies and raises
with each one named (split, feature, anomaly type, description), so nothing
downstream of it runs on bad data. Downstream nodes depend on it through
`add_upstream_node` in `create_pipeline`.

From the statistics it adds what a schema cannot say: a split without
examples, and classes the test split has that train does not (a probe can
not learn them; with class folders split by hash, a class of few images can
end up there).
"""

import os
from typing import Dict, List, Set, Tuple

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

from models import names
from models.names import CLASS_NAME_KEY, TEST_SPLIT, TRAIN_SPLIT


class DataAnomaliesError(RuntimeError):
  """The examples do not conform to the curated schema."""


def split_anomalies(anomalies_uri: str, split: str) -> anomalies_pb2.Anomalies:
  """What ExampleValidator found in one split of an ExampleAnomalies artifact."""
  proto = anomalies_pb2.Anomalies()
  with tf.io.gfile.GFile(os.path.join(names.split_dir(anomalies_uri, split), "SchemaDiff.pb"),
                         "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def read_anomalies(anomalies_artifact) -> List[str]:
  """One human-readable line per anomaly, over all splits."""
  problems = []
  for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
    proto = split_anomalies(anomalies_artifact.uri, split)
    for feature, info in sorted(proto.anomaly_info.items()):
      kinds = ", ".join(anomalies_pb2.AnomalyInfo.Type.Name(r.type)
                        for r in info.reason) or "UNKNOWN"
      problems.append(f"split '{split}', feature '{feature}': {kinds}: "
                      f"{info.description or info.short_description}")
    if proto.HasField("dataset_anomaly_info"):
      info = proto.dataset_anomaly_info
      problems.append(f"split '{split}', dataset: "
                      f"{info.description or info.short_description}")
  return problems


def _split_classes(statistics_artifact) -> Dict[str, Tuple[Set[str], int]]:
  """{split: (class names it holds, number of examples)}."""
  from tfx.components.statistics_gen import stats_artifact_utils
  classes = {}
  for split in artifact_utils.decode_split_names(statistics_artifact.split_names):
    dataset = stats_artifact_utils.load_statistics(statistics_artifact, split).proto().datasets[0]
    held = set()
    for feature in dataset.features:
      if feature.path.step == [CLASS_NAME_KEY]:
        held = {b.label for b in feature.string_stats.rank_histogram.buckets}
    classes[split] = (held, dataset.num_examples)
  return classes


def read_split_problems(statistics_artifact) -> List[str]:
  """Empty splits, and test classes absent from train, one line each."""
  problems = []
  found = _split_classes(statistics_artifact)
  for split, (_, count) in sorted(found.items()):
    if count == 0:
      problems.append(f"split '{split}' is empty: no examples")
  if TRAIN_SPLIT in found and TEST_SPLIT in found and found[TRAIN_SPLIT][1]:
    absent = found[TEST_SPLIT][0] - found[TRAIN_SPLIT][0]
    if absent:
      problems.append(f"split '{TEST_SPLIT}', feature '{CLASS_NAME_KEY}': classes absent "
                      f"from split '{TRAIN_SPLIT}': {sorted(absent)}")
  return problems


@tfx.dsl.components.component
def AnomaliesGate(  # pylint: disable=invalid-name
    anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies],
    statistics: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleStatistics]) -> None:
  """Raises DataAnomaliesError naming every anomaly; passes otherwise."""
  problems = read_split_problems(statistics) + read_anomalies(anomalies)
  if problems:
    raise DataAnomaliesError(
        "ExampleValidator found anomalies against the schema; stopping before "
        "Transform and training:\n  " + "\n  ".join(problems))
