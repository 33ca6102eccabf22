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

Between spans (`compare_spans`): the train split's statistics against
those of the data the latest blessed model was trained on (usually the
previous span; one the gate stopped never is), by the schema's drift
comparators (TFDV: L-infinity of the class shares, Jensen-Shannon of the
image statistics' histograms), and a class that data had and this span
lacks. Drift stops the run, or
with `on_drift="warn"` is logged and the run goes on; either way the log
says what was compared with what.
"""

import dataclasses
import os
from typing import Dict, List, Optional, Set, Tuple

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

from models import names, run_log
from models import schema as schema_lib
from components.model_resolvers import artifact_span
from models.names import CLASS_NAME_KEY, TEST_SPLIT, TRAIN_SPLIT

_DRIFT_TYPES = (
    anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
    anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
)


class DataAnomaliesError(RuntimeError):
  """The examples do not conform to the curated schema."""


def split_anomalies(anomalies_uri: str, split: str) -> anomalies_pb2.Anomalies:
  """What ExampleValidator found in one split of an ExampleAnomalies artifact."""
  proto = anomalies_pb2.Anomalies()
  with tf.io.gfile.GFile(
      os.path.join(names.split_dir(anomalies_uri, split), "SchemaDiff.pb"), "rb"
  ) as f:
    proto.ParseFromString(f.read())
  return proto


def read_anomalies(anomalies_artifact) -> List[str]:
  """One human-readable line per anomaly, over all splits."""
  problems = []
  for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
    proto = split_anomalies(anomalies_artifact.uri, split)
    for feature, info in sorted(proto.anomaly_info.items()):
      kinds = (
          ", ".join(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason) or "UNKNOWN"
      )
      problems.append(
          f"split '{split}', feature '{feature}': {kinds}: "
          f"{info.description or info.short_description}"
      )
    if proto.HasField("dataset_anomaly_info"):
      info = proto.dataset_anomaly_info
      problems.append(f"split '{split}', dataset: {info.description or info.short_description}")
  return problems


def _split_statistics(statistics_artifact, split: str):
  """The DatasetFeatureStatisticsList of one split."""
  from tfx.components.statistics_gen import stats_artifact_utils

  return stats_artifact_utils.load_statistics(statistics_artifact, split).proto()


def _classes(dataset) -> Set[str]:
  """The class names a split's DatasetFeatureStatistics counts."""
  for feature in dataset.features:
    if feature.path.step == [CLASS_NAME_KEY]:
      return {b.label for b in feature.string_stats.rank_histogram.buckets}
  return set()


def _split_classes(statistics_artifact) -> Dict[str, Tuple[Set[str], int]]:
  """{split: (class names it holds, number of examples)}."""
  classes = {}
  for split in artifact_utils.decode_split_names(statistics_artifact.split_names):
    dataset = _split_statistics(statistics_artifact, split).datasets[0]
    classes[split] = (_classes(dataset), dataset.num_examples)
  return classes


@dataclasses.dataclass
class SpanComparison:
  """The train split of one span against the served model's data."""

  span: int
  reference: str  # "span 2", or "the latest run" (its span unknown)
  compared: List[str]  # one line per comparator: value vs threshold
  problems: List[str]  # drift above a threshold, classes gone


def compare_spans(
    statistics, previous_statistics, schema, span: int, previous_span: Optional[int]
) -> Optional[SpanComparison]:
  """`statistics`' train split against `previous_statistics`' (artifacts)
  by `compare_statistics`; None when there is nothing to compare (no
  blessed model yet, or the same statistics)."""
  if previous_statistics is None or previous_statistics.uri == statistics.uri:
    return None
  return compare_statistics(
      _split_statistics(statistics, TRAIN_SPLIT),
      _split_statistics(previous_statistics, TRAIN_SPLIT),
      schema,
      span,
      previous_span,
  )


def compare_statistics(
    current, previous, schema, span: int, previous_span: Optional[int]
) -> SpanComparison:
  """Two DatasetFeatureStatisticsLists compared by the schema's drift
  comparators (TFDV), and the classes `current` lost; `previous_span`
  None: its span is not known (the latest run's statistics, on Vertex AI)."""
  import tensorflow_data_validation as tfdv

  reference = "the latest run" if previous_span is None else f"span {previous_span}"
  what = f"span {span} vs {reference}"
  result = tfdv.validate_statistics(current, schema, previous_statistics=previous)
  compared = []
  for info in result.drift_skew_info:
    feature = ".".join(info.path.step)
    for m in info.drift_measurements:
      kind = {m.L_INFTY: "L-infinity", m.JENSEN_SHANNON_DIVERGENCE: "Jensen-Shannon"}.get(
          m.type, str(m.type)
      )
      compared.append(f"{feature}: {kind} {m.value:.4f} (threshold {m.threshold:g})")
  problems = [
      f"{what}, feature '{feature}': {info.description or info.short_description}"
      for feature, info in sorted(result.anomaly_info.items())
      if any(r.type in _DRIFT_TYPES for r in info.reason)
  ]
  gone = _classes(previous.datasets[0]) - _classes(current.datasets[0])
  if gone:
    problems.append(
        f"{what}, feature '{CLASS_NAME_KEY}': classes in {reference} "
        f"missing from span {span}: {sorted(gone)}"
    )
  return SpanComparison(span, reference, compared, problems)


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
      problems.append(
          f"split '{TEST_SPLIT}', feature '{CLASS_NAME_KEY}': classes absent "
          f"from split '{TRAIN_SPLIT}': {sorted(absent)}"
      )
  return problems


@tfx.dsl.components.component
def AnomaliesGate(  # pylint: disable=invalid-name
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    previous_statistics: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleStatistics
    ] = None,
    previous_examples: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.Examples
    ] = None,
    on_drift: tfx.dsl.components.Parameter[str] = "stop",
) -> None:
  """Raises DataAnomaliesError naming every anomaly, and drift from
  `previous_statistics` (the blessed model's data) unless `on_drift`
  (`models.config.DRIFT_ACTIONS`, checked with the profile) is "warn";
  passes otherwise."""
  problems = read_split_problems(statistics) + read_anomalies(anomalies)
  from tfx.utils import io_utils

  comparison = compare_spans(
      statistics,
      previous_statistics,
      schema_lib.read_schema(io_utils.get_only_uri_in_dir(schema.uri)),
      artifact_span(examples),
      artifact_span(previous_examples) if previous_examples is not None else None,
  )
  if comparison is not None:
    run_log.log.info(
        "[AnomaliesGate] span %d's train split vs %s's (the served model's data):\n  %s",
        comparison.span,
        comparison.reference,
        "\n  ".join(comparison.compared or ["no drift comparator in the schema"]),
    )
    if comparison.problems and on_drift == "warn":
      run_log.log.warning(
          "[AnomaliesGate] drift (on_drift=warn, the run goes on):\n  %s",
          "\n  ".join(comparison.problems),
      )
    elif comparison.problems:
      problems += comparison.problems
  if problems:
    raise DataAnomaliesError(
        "The data failed validation (the schema, and drift from the served model's data); "
        "stopping before Transform and training:\n  " + "\n  ".join(problems)
    )
