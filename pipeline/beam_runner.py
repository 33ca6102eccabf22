"""BeamDagRunner whose nodes say, in the run log, when they start and end.

Each node logs its start, and its end with its wall time (or that its
outputs came from the cache, or that it failed); the Evaluator also logs the
gate's verdict and the Pusher what it pushed where, read back from MLMD as
the report reads them (`pipeline.report`).
"""

import time
from typing import Any, Iterable

from tfx.orchestration.beam import beam_dag_runner

from models import run_log
from pipeline import report, runs

# What a node's end line adds: its decision, from its MLMD execution row.
OUTCOMES = {
    "Evaluator": report.gate_verdict,
    "CorpusEmbedder": report.corpus_outcome,
    "SearchIndexer": report.index_outcome,
    "Pusher": report.push_outcome,
}


class LoggedNode(beam_dag_runner.PipelineNodeAsDoFn):
  """Runs one node as BeamDagRunner does, with start and end lines."""

  def process(self, element: Any, *signals: Iterable[Any]) -> None:
    """Runs the node; logs its start, its end and wall time, and its outcome."""
    node = self._node_id
    run_log.log.info("%s: started", node)
    start = time.monotonic()
    try:
      super().process(element, *signals)
    except BaseException:
      run_log.log.info("%s: FAILED after %s", node, run_log.duration(time.monotonic() - start))
      raise
    seconds = time.monotonic() - start
    row = self._execution_row()
    if row and row["state"] == "CACHED":
      run_log.log.info("%s: done, from the cache (%s)", node, run_log.duration(seconds))
    else:
      run_log.log.info("%s: done in %s", node, run_log.duration(seconds))
    outcome = OUTCOMES[node](row) if row and node in OUTCOMES else None
    if outcome:
      run_log.log.info("%s: %s", node, outcome)

  def _execution_row(self):
    """This node's execution in this run (`runs.last_run_executions`)."""
    metadata_path = self._mlmd_connection_config.sqlite.filename_uri
    run_id = self._pipeline_runtime_spec.pipeline_run_id.field_value.string_value
    if not metadata_path or not run_id:
      return None
    return runs.last_run_nodes(metadata_path, self._pipeline_info.id, run_id).get(self._node_id)


class LoggedBeamDagRunner(beam_dag_runner.BeamDagRunner):
  """BeamDagRunner running each node as a `LoggedNode` (the local runner's)."""

  _PIPELINE_NODE_DO_FN_CLS = LoggedNode
