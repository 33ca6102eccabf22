"""Pipeline runs as MLMD recorded them: each execution's state, wall time and
output artifacts, and the newest run's Examples, Transform graph and schema.

Reads the SQLite MLMD database a local run writes (`names.metadata_path`)
with ml_metadata alone, so the report, the benchmarks and the notebooks
share one reader without importing TFX.
"""

import argparse
import os
from typing import Dict, List, Optional, Tuple

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from models import names

_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def open_store(metadata_path: str, writable: bool = False) -> metadata_store.MetadataStore:
  """The SQLite MLMD store at `metadata_path`, read-only unless `writable`."""
  if not os.path.exists(metadata_path):
    raise FileNotFoundError(
        f"No MLMD database at {metadata_path}: run `make pipeline` "
        "first, or name the run's output folder"
    )
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = (
      metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
      if writable
      else metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  )
  return metadata_store.MetadataStore(config)


def list_runs(metadata_path: str, pipeline_name: Optional[str] = None) -> List[Dict]:
  """[{run_id, pipeline, created (ms since epoch)}] of the runs of
  `pipeline_name` (None: of every pipeline), oldest first. A run id is the
  time the run started, e.g. "20261130-110518.886888"."""
  store = open_store(metadata_path)
  pipelines = {
      c.id: c.name
      for c in store.get_contexts_by_type("pipeline")
      if pipeline_name is None or c.name == pipeline_name
  }
  found = []
  for run in store.get_contexts_by_type("pipeline_run"):
    parent = [
        pipelines[p.id] for p in store.get_parent_contexts_by_context(run.id) if p.id in pipelines
    ]
    if parent:
      found.append(dict(run_id=run.name, pipeline=parent[0], created=run.create_time_since_epoch))
  return sorted(found, key=lambda r: r["created"])


def find_run(
    metadata_path: str, pipeline_name: Optional[str] = None, run_id: Optional[str] = None
) -> Optional[Dict]:
  """The `list_runs` entry of run `run_id` (None: the newest run of
  `pipeline_name`, or of any pipeline); None when there is no run yet.
  A `run_id` that is not there raises, naming the runs there are."""
  found = [
      r for r in list_runs(metadata_path, pipeline_name) if run_id is None or r["run_id"] == run_id
  ]
  if not found and run_id is not None:
    raise LookupError(
        f"{metadata_path} has no run {run_id!r}; its runs: "
        f"{[r['run_id'] for r in list_runs(metadata_path)]}"
    )
  return found[-1] if found else None


def last_run_executions(
    metadata_path: str, pipeline_name: Optional[str] = None, run_id: Optional[str] = None
) -> List[Dict]:
  """[{node, state, seconds, started, ended (ms since epoch),
  inputs / outputs: {type: [uri]}, output_properties: {type: [{custom
  property: value}]}}] of run `run_id` (`list_runs`; None: the newest run of
  `pipeline_name`, or of whichever pipeline ran last, e.g. CIFAR-10's
  `mae-tfx` or `mae-tfx-<data set>`), in the order the executions started."""
  found = find_run(metadata_path, pipeline_name, run_id)
  if found is None:
    return []
  store = open_store(metadata_path)
  run = store.get_context_by_type_and_name("pipeline_run", found["run_id"])
  rows = []
  for execution in sorted(
      store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch
  ):
    nodes = [
        c.name
        for c in store.get_contexts_by_execution(execution.id)
        if store.get_context_types_by_id([c.type_id])[0].name == "node"
    ]
    node = nodes[0].split(".", 1)[-1] if nodes else str(execution.type_id)
    events = store.get_events_by_execution_ids([execution.id])
    uris: Dict[int, Dict[str, List[str]]] = {
        metadata_store_pb2.Event.INPUT: {},
        metadata_store_pb2.Event.OUTPUT: {},
    }
    output_properties: Dict[str, List[Dict]] = {}
    kinds = {e.artifact_id: e.type for e in events if e.type in uris}
    for artifact in store.get_artifacts_by_id(list(kinds)):
      artifact_type = store.get_artifact_types_by_id([artifact.type_id])[0].name
      uris[kinds[artifact.id]].setdefault(artifact_type, []).append(artifact.uri)
      if kinds[artifact.id] == metadata_store_pb2.Event.OUTPUT:
        output_properties.setdefault(artifact_type, []).append(
            {k: v.string_value or v.int_value for k, v in artifact.custom_properties.items()}
        )
    rows.append(
        dict(
            node=node,
            state=_STATES.get(execution.last_known_state, "?"),
            seconds=(execution.last_update_time_since_epoch - execution.create_time_since_epoch)
            / 1000.0,
            started=execution.create_time_since_epoch,
            ended=execution.last_update_time_since_epoch,
            inputs=uris[metadata_store_pb2.Event.INPUT],
            outputs=uris[metadata_store_pb2.Event.OUTPUT],
            output_properties=output_properties,
        )
    )
  return rows


ABANDONED_PROPERTY = "abandoned"


def mark_abandoned_executions(metadata_path: str) -> List[str]:
  """Marks FAILED every execution still RUNNING (or NEW) in the store: the
  caller holds the output folder (`local_runner.output_lock`), so no run is
  alive and these are what a killed run left. Returns their nodes; each gets
  a custom property saying so. MLMD then shows the killed run's failed
  executions beside the next run's completed ones."""
  if not os.path.exists(metadata_path):
    return []
  store = open_store(metadata_path, writable=True)
  stale = [
      e
      for e in store.get_executions()
      if e.last_known_state
      in (metadata_store_pb2.Execution.RUNNING, metadata_store_pb2.Execution.NEW)
  ]
  nodes = []
  for execution in stale:
    execution.last_known_state = metadata_store_pb2.Execution.FAILED
    execution.custom_properties[ABANDONED_PROPERTY].string_value = (
        "the run was killed while this ran; marked by the next run on this output folder"
    )
    node = [
        c.name
        for c in store.get_contexts_by_execution(execution.id)
        if store.get_context_types_by_id([c.type_id])[0].name == "node"
    ]
    nodes.append(node[0].split(".", 1)[-1] if node else str(execution.id))
  if stale:
    store.put_executions(stale)
  return nodes


def run_edges(rows: List[Dict]) -> List[Tuple[str, str]]:
  """(producer node, consumer node) for every artifact one execution of the
  run output and another took as input: the DAG's data flow (a node that
  only orders others, like AnomaliesGate, shows no edge of its own)."""
  produced = {uri: r["node"] for r in rows for uris in r["outputs"].values() for uri in uris}
  return sorted(
      {
          (produced[uri], r["node"])
          for r in rows
          for uris in r["inputs"].values()
          for uri in uris
          if uri in produced and produced[uri] != r["node"]
      }
  )


def last_run_nodes(
    metadata_path: str, pipeline_name: Optional[str] = None, run_id: Optional[str] = None
) -> Dict[str, Dict]:
  """`last_run_executions` keyed by node id (e.g. "mae_pretrain")."""
  return {r["node"]: r for r in last_run_executions(metadata_path, pipeline_name, run_id)}


def example_gen_row(rows: Dict[str, Dict]) -> Optional[Dict]:
  """The ExampleGen row among `last_run_nodes` (whichever source it ingested)."""
  return next((r for node, r in rows.items() if node.endswith("ExampleGen")), None)


def pipeline_inputs(metadata_path: str, pipeline_name: Optional[str] = None) -> Tuple[str, str]:
  """(Examples uri, TransformGraph uri) of the newest run."""
  rows = last_run_nodes(metadata_path, pipeline_name)
  try:
    return (
        (example_gen_row(rows) or {})["outputs"]["Examples"][0],
        rows["Transform"]["outputs"]["TransformGraph"][0],
    )
  except KeyError as e:
    raise SystemExit(
        f"{metadata_path} has no completed ExampleGen/Transform run "
        f"({e}); run `make pipeline` first"
    ) from e


def schema_file(metadata_path: str, pipeline_name: Optional[str] = None) -> str:
  """The schema file the newest run was held to (it names the classes)."""
  rows = last_run_nodes(metadata_path, pipeline_name)
  try:
    uri = rows["ImportSchemaGen"]["outputs"]["Schema"][0]
  except KeyError as e:
    raise SystemExit(
        f"{metadata_path} has no completed schema in its newest run "
        f"({e}); run `make pipeline` first"
    ) from e
  return os.path.join(uri, "schema.pbtxt")


def add_output_dir_argument(parser: argparse.ArgumentParser) -> None:
  """The commands' --output-dir: a local run's output folder."""
  parser.add_argument(
      "--output-dir",
      default=names.default_output_dir(),
      help=f"the runs' output folder (default ${names.OUTPUT_ENV} or outputs/)",
  )


def main(argv=None) -> None:
  """Lists the runs of an output folder, or prints one path of the newest run
  for scripts (e.g. `serving.embed --examples "$(python -m pipeline.runs --examples)"`)."""
  p = argparse.ArgumentParser(description=main.__doc__)
  add_output_dir_argument(p)
  p.add_argument(
      "--pipeline-name",
      default=None,
      help="mae-tfx (CIFAR-10) or mae-tfx-<data set> (default: whichever ran last)",
  )
  p.add_argument(
      "--examples",
      action="store_true",
      help="print the newest run's Examples folder (its Split-<name>/ hold the data)",
  )
  args = p.parse_args(argv)
  metadata_path = names.metadata_path(args.output_dir)
  if args.examples:
    print(pipeline_inputs(metadata_path, args.pipeline_name)[0])
    return
  for run in list_runs(metadata_path, args.pipeline_name):
    print(f"{run['run_id']}  {run['pipeline']}")


if __name__ == "__main__":
  main()
