"""AnomaliesGate: fails the pipeline when ExampleValidator found anomalies.

ExampleValidator only records anomalies; TFX goes on to Transform and the
Trainers regardless. This component reads every split's anomalies and raises
with each one named (split, feature, anomaly type, description), so nothing
downstream of it runs on bad data. Downstream nodes depend on it through
`add_upstream_node` in `create_pipeline`.
"""

import os
from typing import List

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils


class DataAnomaliesError(RuntimeError):
  """The examples do not conform to the curated schema."""


def read_anomalies(anomalies_artifact) -> List[str]:
  """One human-readable line per anomaly, over all splits."""
  problems = []
  for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
    path = os.path.join(
        artifact_utils.get_split_uri([anomalies_artifact], split), "SchemaDiff.pb")
    proto = anomalies_pb2.Anomalies()
    with tf.io.gfile.GFile(path, "rb") as f:
      proto.ParseFromString(f.read())
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


@tfx.dsl.components.component
def AnomaliesGate(  # pylint: disable=invalid-name
    anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
  """Raises DataAnomaliesError naming every anomaly; passes otherwise."""
  problems = read_anomalies(anomalies)
  if problems:
    raise DataAnomaliesError(
        "ExampleValidator found anomalies against the schema; stopping before "
        "Transform and training:\n  " + "\n  ".join(problems))
