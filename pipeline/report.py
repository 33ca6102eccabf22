"""What the last pipeline run did, read back from MLMD.

  python -m pipeline.report [--metadata outputs/metadata.sqlite]

Prints each component's state and wall time, the MAE throughput, the linear
probe's TFMA accuracy and whether (and where) the model was pushed.
"""

import argparse
import json
import os
from typing import Dict, List, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from pipeline import configs

_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def _store(metadata_path: str) -> metadata_store.MetadataStore:
  if not os.path.exists(metadata_path):
    raise FileNotFoundError(f"No MLMD database at {metadata_path}")
  return metadata_store.MetadataStore(
      metadata.sqlite_metadata_connection_config(metadata_path))


def last_run_executions(metadata_path: str, pipeline_name: str) -> List[Dict]:
  """[{node, state, seconds, outputs: {type: [uri]},
  output_properties: {type: [{custom property: value}]}}] of the newest run."""
  store = _store(metadata_path)
  pipelines = [c for c in store.get_contexts_by_type("pipeline")
               if c.name == pipeline_name]
  if not pipelines:
    return []
  runs = [c for c in store.get_contexts_by_type("pipeline_run")
          if any(p.id == pipelines[0].id
                 for p in store.get_parent_contexts_by_context(c.id))]
  if not runs:
    return []
  run = max(runs, key=lambda c: c.create_time_since_epoch)
  rows = []
  for execution in sorted(store.get_executions_by_context(run.id),
                          key=lambda e: e.create_time_since_epoch):
    nodes = [c.name for c in store.get_contexts_by_execution(execution.id)
             if store.get_context_types_by_id([c.type_id])[0].name == "node"]
    node = nodes[0].split(".", 1)[-1] if nodes else str(execution.type_id)
    outputs: Dict[str, List[str]] = {}
    output_properties: Dict[str, List[Dict]] = {}
    events = store.get_events_by_execution_ids([execution.id])
    out_ids = [e.artifact_id for e in events
               if e.type == metadata_store_pb2.Event.OUTPUT]
    for artifact in store.get_artifacts_by_id(out_ids):
      artifact_type = store.get_artifact_types_by_id([artifact.type_id])[0].name
      outputs.setdefault(artifact_type, []).append(artifact.uri)
      output_properties.setdefault(artifact_type, []).append(
          {k: v.string_value or v.int_value
           for k, v in artifact.custom_properties.items()})
    rows.append(dict(
        node=node, state=_STATES.get(execution.last_known_state, "?"),
        seconds=(execution.last_update_time_since_epoch -
                 execution.create_time_since_epoch) / 1000.0,
        outputs=outputs, output_properties=output_properties))
  return rows


def pipeline_inputs(metadata_path: str,
                    pipeline_name: str = configs.PIPELINE_NAME) -> Tuple[str, str]:
  """(Examples uri, TransformGraph uri) of the newest run."""
  rows = {r["node"]: r for r in last_run_executions(metadata_path, pipeline_name)}
  try:
    return (rows["Cifar10ExampleGen"]["outputs"]["Examples"][0],
            rows["Transform"]["outputs"]["TransformGraph"][0])
  except KeyError as e:
    raise SystemExit(f"{metadata_path} has no completed ExampleGen/Transform run "
                     f"({e}); run `make pipeline` first") from e


def split_files(examples: str, split: str) -> List[str]:
  """File patterns of one split of an Examples artifact."""
  return [os.path.join(examples, f"Split-{split}", "*")]


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def tfma_accuracy(evaluation_uri: str) -> Dict[str, float]:
  """{slice: accuracy} from an Evaluator output."""
  import tensorflow_model_analysis as tfma
  result = tfma.load_eval_result(evaluation_uri)
  accuracies = {}
  for slice_key, metrics in result.slicing_metrics:
    name = "overall" if not slice_key else ",".join(f"{k}={v}" for k, v in slice_key)
    for metric_set in metrics.values():
      for per_key in metric_set.values():
        value = per_key.get("sparse_categorical_accuracy")
        if value is not None:
          accuracies[name] = value.get("doubleValue")
  return accuracies


def format_report(metadata_path: str, pipeline_name: str = configs.PIPELINE_NAME) -> str:
  rows = last_run_executions(metadata_path, pipeline_name)
  lines = ["", "=== mae-tfx run report ===", f"{'component':36s} {'state':10s} seconds"]
  for r in rows:
    lines.append(f"{r['node']:36s} {r['state']:10s} {r['seconds']:8.1f}")
  total = sum(r["seconds"] for r in rows)
  lines.append(f"{'total':36s} {'':10s} {total:8.1f}")
  by_node = {r["node"]: r for r in rows}
  mae = by_node.get("mae_pretrain")
  if mae and mae["outputs"].get("Model"):
    summary = _read_json(os.path.join(mae["outputs"]["Model"][0], "Format-Serving",
                                      "train_summary.json"))
    if summary and summary["history"]:
      ips = [h["images_per_second"] for h in summary["history"]]
      lines.append(f"MAE pretraining: {len(ips)} epochs run, final loss "
                   f"{summary['history'][-1]['loss']:.4f}, "
                   f"{sorted(ips)[len(ips) // 2]:.0f} img/s (median epoch)")
  evaluator = by_node.get("Evaluator")
  if evaluator and evaluator["outputs"].get("ModelEvaluation"):
    acc = tfma_accuracy(evaluator["outputs"]["ModelEvaluation"][0])
    if "overall" in acc:
      lines.append(f"Linear probe test accuracy (TFMA): {acc['overall']:.4f}")
    per_label = {k: v for k, v in acc.items() if k != "overall"}
    if per_label:
      lines.append("  per label: " + ", ".join(
          f"{k.split('=')[1]}: {v:.3f}" for k, v in sorted(per_label.items())))
  if evaluator and evaluator["outputs"].get("ModelBlessing"):
    blessed = os.path.exists(os.path.join(evaluator["outputs"]["ModelBlessing"][0],
                                          "BLESSED"))
    lines.append(f"Blessed: {blessed}")
  pusher = by_node.get("Pusher")
  if pusher and pusher["output_properties"].get("PushedModel"):
    pushed = pusher["output_properties"]["PushedModel"][0]
    lines.append(f"Pushed: {pushed.get('pushed_destination')}" if pushed.get("pushed")
                 else "Pushed: no (model not blessed)")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--metadata", default=os.path.join(configs.PROJECT_DIR, "outputs",
                                                    "metadata.sqlite"))
  p.add_argument("--pipeline-name", default=configs.PIPELINE_NAME)
  args = p.parse_args()
  print(format_report(args.metadata, args.pipeline_name))


if __name__ == "__main__":
  main()
