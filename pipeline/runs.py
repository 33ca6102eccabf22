"""Pipeline runs as MLMD recorded them: each execution's state, wall time and
output artifacts, and the newest run's Examples, Transform graph and schema.

Reads the SQLite MLMD database a local run writes (`names.metadata_path`)
with ml_metadata alone, so the report, batch embedding, the benchmarks and
the notebooks share one reader without importing TFX.
"""

import os
from typing import Dict, List, Optional, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2


_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
  if not os.path.exists(metadata_path):
    raise FileNotFoundError(f"No MLMD database at {metadata_path}: run `make pipeline` "
                            "first, or name the run's output folder")
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  return metadata_store.MetadataStore(config)


def last_run_executions(metadata_path: str,
                        pipeline_name: Optional[str] = None) -> List[Dict]:
  """[{node, state, seconds, outputs: {type: [uri]},
  output_properties: {type: [{custom property: value}]}}] of the newest run
  of `pipeline_name` (None: of whichever pipeline ran last, e.g. CIFAR-10's
  `mae-tfx` or `mae-tfx-<data set>`)."""
  store = open_store(metadata_path)
  pipelines = {c.id for c in store.get_contexts_by_type("pipeline")
               if pipeline_name is None or c.name == pipeline_name}
  if not pipelines:
    return []
  runs = [c for c in store.get_contexts_by_type("pipeline_run")
          if any(p.id in pipelines for p in store.get_parent_contexts_by_context(c.id))]
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


def last_run_nodes(metadata_path: str,
                   pipeline_name: Optional[str] = None) -> Dict[str, Dict]:
  """`last_run_executions` keyed by node id (e.g. "mae_pretrain")."""
  return {r["node"]: r for r in last_run_executions(metadata_path, pipeline_name)}


def example_gen_row(rows: Dict[str, Dict]) -> Optional[Dict]:
  """The ExampleGen row among `last_run_nodes` (whichever source it ingested)."""
  return next((r for node, r in rows.items() if node.endswith("ExampleGen")), None)


def pipeline_inputs(metadata_path: str,
                    pipeline_name: Optional[str] = None) -> Tuple[str, str]:
  """(Examples uri, TransformGraph uri) of the newest run."""
  rows = last_run_nodes(metadata_path, pipeline_name)
  try:
    return ((example_gen_row(rows) or {})["outputs"]["Examples"][0],
            rows["Transform"]["outputs"]["TransformGraph"][0])
  except KeyError as e:
    raise SystemExit(f"{metadata_path} has no completed ExampleGen/Transform run "
                     f"({e}); run `make pipeline` first") from e


def schema_file(metadata_path: str, pipeline_name: Optional[str] = None) -> str:
  """The schema file the newest run was held to (it names the classes)."""
  rows = last_run_nodes(metadata_path, pipeline_name)
  try:
    uri = rows["ImportSchemaGen"]["outputs"]["Schema"][0]
  except KeyError as e:
    raise SystemExit(f"{metadata_path} has no completed schema in its newest run "
                     f"({e}); run `make pipeline` first") from e
  return os.path.join(uri, "schema.pbtxt")
