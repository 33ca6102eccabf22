"""What a pipeline run did, read back from MLMD: a text summary, and a
static HTML page with its pictures (`make report`).

  python -m pipeline.report [--output-dir outputs] [--run-id ID] [--html [PATH]]

Prints each component's state and wall time, the MAE throughput, the linear
probe's and the k-NN's TFMA accuracy and whether (and where) the model was
pushed. With --html it also writes (default <output-dir>/report.html)
`notebooks/pipeline_walkthrough.ipynb` run on that run, as one self-contained
page without the code (images embedded): the DAG, the data statistics,
schema and anomalies, Transform's normalisation, the training curves, the
reconstructions, TFMA's accuracy per class, the confusion matrix, the probe
beside a random-init encoder, the embedding map, nearest neighbours and the
probe's most confident mistakes.
"""

import argparse
import json
import os
from typing import Dict, Optional

from models import names
from pipeline.run_outputs import gate_failures, tfma_accuracy
from pipeline.runs import add_output_dir_argument, example_gen_row, last_run_executions


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def format_report(
    metadata_path: str, pipeline_name: Optional[str] = None, run_id: Optional[str] = None
) -> str:
  """Run `run_id` (None: the newest run of `pipeline_name`, or of the
  pipeline that ran last)."""
  rows = last_run_executions(metadata_path, pipeline_name, run_id)
  title = (
      f"=== run {run_id} ==="
      if run_id
      else f"=== {pipeline_name} run report ==="
      if pipeline_name
      else "=== newest run report ==="
  )
  lines = ["", title, f"{'component':36s} {'state':10s} seconds"]
  for r in rows:
    lines.append(f"{r['node']:36s} {r['state']:10s} {r['seconds']:8.1f}")
  total = sum(r["seconds"] for r in rows)
  lines.append(f"{'total':36s} {'':10s} {total:8.1f}")
  by_node = {r["node"]: r for r in rows}
  gen = example_gen_row(by_node)
  if gen and gen["output_properties"].get("Examples"):
    props = gen["output_properties"]["Examples"][0]
    if props.get(names.SPAN_PROPERTY):  # 0: a source without spans
      lines.append(f"Ingestion: span {props[names.SPAN_PROPERTY]}")
    if props.get(names.BAD_IMAGES_PROPERTY):
      lines.append(
          f"Ingestion: {props[names.BAD_IMAGES_PROPERTY]} bad image file(s) skipped, listed in "
          + os.path.join(gen["outputs"]["Examples"][0], names.BAD_IMAGES_FILE)
      )
  mae = by_node.get(names.MAE_TRAINER)
  if mae and mae["outputs"].get("ModelRun"):
    summary = _read_json(os.path.join(mae["outputs"]["ModelRun"][0], names.SUMMARY_FILE))
    if summary and summary["history"]:
      ips = [h["images_per_second"] for h in summary["history"]]
      lines.append(
          f"MAE pretraining: {len(ips)} epochs run on {summary.get('train_examples')} "
          f"images, final loss {summary['history'][-1]['loss']:.4f}, "
          f"{sorted(ips)[len(ips) // 2]:.0f} img/s (median epoch)"
      )
    warm = (summary or {}).get("warm_start")
    if warm:
      lines.append(
          f"  warm start from {warm['source']}"
          if warm["source"]
          else f"  from scratch: {warm['reason']}"
      )
  probe = by_node.get(names.PROBE_TRAINER)
  if probe and probe["outputs"].get("ModelRun"):
    summary = _read_json(os.path.join(probe["outputs"]["ModelRun"][0], names.SUMMARY_FILE))
    if summary and "knn_accuracy" in summary:
      knn = summary.get("knn") or {str(summary["knn_k"]): summary["knn_accuracy"]}
      lines.append(
          f"Linear probe on {summary['train_examples']} train images, "
          f"{summary.get('classes', '?')} classes: test linear "
          f"{summary['eval_accuracy']:.4f}, "
          + ", ".join(f"{k}-NN {acc:.4f}" for k, acc in knn.items())
      )
  evaluator = by_node.get("Evaluator")
  if evaluator and evaluator["outputs"].get("ModelEvaluation"):
    evaluation = evaluator["outputs"]["ModelEvaluation"][0]
    accuracies = tfma_accuracy(evaluation)
    # The model blessed before, scored on the same test examples.
    baseline = tfma_accuracy(evaluation, baseline=True)
    if baseline:
      lines.append(
          "Against the model blessed before it, on the same test examples "
          "(its accuracy in brackets):"
      )
    for output, title in (
        (names.PROBABILITIES_KEY, "Linear probe"),
        (names.KNN_PROBABILITIES_KEY, "k-NN"),
    ):
      acc, base = accuracies.get(output, {}), baseline.get(output, {})

      # Called only within this iteration; the default binds `base` explicitly (B023).
      def versus(key: str, digits: int, base: Dict = base) -> str:
        """The baseline's value of `key` in brackets; "" without one."""
        return f" ({base[key]:.{digits}f})" if key in base else ""

      if "overall" in acc:
        lines.append(f"{title} test accuracy (TFMA): {acc['overall']:.4f}{versus('overall', 4)}")
      per_class = {k: v for k, v in acc.items() if k != "overall"}
      if per_class:
        lines.append(
            "  per class: "
            + ", ".join(
                f"{k.split('=', 1)[1]}: {v:.3f}{versus(k, 3)}" for k, v in sorted(per_class.items())
            )
        )
  verdict = gate_verdict(evaluator) if evaluator else None
  if verdict:
    lines.append(f"Gate: {verdict}")
  indexed = index_outcome(by_node["SearchIndexer"]) if by_node.get("SearchIndexer") else None
  if indexed:
    lines.append(f"Search index: {indexed}")
  outcome = push_outcome(by_node.get("Pusher")) if by_node.get("Pusher") else None
  if outcome:
    lines.append(f"Pusher: {outcome}")
  return "\n".join(lines)


def gate_verdict(evaluator: Dict) -> Optional[str]:
  """The Evaluator's decision (a `runs.last_run_executions` row): blessed or
  not, with the test accuracies, and every threshold that failed."""
  outputs = evaluator["outputs"]
  if not outputs.get("ModelBlessing") or not outputs.get("ModelEvaluation"):
    return None
  evaluation = outputs["ModelEvaluation"][0]
  accuracies = tfma_accuracy(evaluation)
  linear_first = sorted(accuracies, key=lambda output: output != names.PROBABILITIES_KEY)
  measured = ", ".join(
      f"{names.CLASSIFIER_TITLES.get(output, output)} {accuracies[output]['overall']:.4f}"
      for output in linear_first
      if "overall" in accuracies[output]
  )
  if os.path.exists(os.path.join(outputs["ModelBlessing"][0], "BLESSED")):
    return f"blessed (test accuracy: {measured})"
  return f"NOT blessed: {'; '.join(gate_failures(evaluation))} (test accuracy: {measured})"


def corpus_outcome(embedder: Dict) -> Optional[str]:
  """Which model embedded the search corpus, and how many vectors were
  added, reused from the served index and removed (a CorpusEmbedder row)."""
  corpus = (embedder["output_properties"].get(names.EMBEDDINGS_TYPE) or [None])[0]
  if corpus is None or not corpus.get("case"):
    return None
  if not corpus.get("embedded"):
    return corpus["case"]
  line = (
      f"{corpus['case']}; {corpus.get('added', 0)} vectors added, {corpus.get('reused', 0)} "
      f"reused, {corpus.get('removed', 0)} removed"
  )
  unknown = [i for i in (corpus.get("unknown_removed") or "").split("\n") if i]
  if unknown:
    line += (
        f"; {len(unknown)} removed id(s) not in the corpus, ignored: "
        + ", ".join(unknown[:10])
        + (" ..." if len(unknown) > 10 else "")
    )
  return line


def index_outcome(indexer: Dict) -> Optional[str]:
  """What the SearchIndexer built, why, how it scored, and its verdict;
  the size of its thumbnails when it wrote them."""
  index = (indexer["output_properties"].get(names.SEARCH_INDEX_TYPE) or [None])[0]
  if index is None:
    return None
  verdict = "blessed" if index.get("blessed") else "NOT blessed"
  line = f"{verdict}: {index.get('summary') or index.get('reason')}"
  if index.get(names.THUMBNAIL_BYTES_PROPERTY):
    line += f"; thumbnails {index[names.THUMBNAIL_BYTES_PROPERTY] / 1e6:.2f} MB"
  return line


def push_outcome(pusher: Dict) -> Optional[str]:
  """What the Pusher did (a `runs.last_run_executions` row)."""
  pushed = (pusher["output_properties"].get("PushedModel") or [None])[0]
  if pushed is None:
    return None
  if not pushed.get("pushed"):
    why = pushed.get("not_pushed_reason") or "the model was not blessed"
    return f"nothing pushed ({why}); the served versions are unchanged (no projector files written)"
  line = f"pushed version {pushed.get('pushed_version')} to {pushed.get('pushed_destination')}"
  if pushed.get("index_only"):
    line += (
        f": the served model of {pushed.get('model_from')} with the new search index (index-only)"
    )
  summary = pushed.get(names.PROJECTOR_SUMMARY_PROPERTY)
  if summary:
    folder = pushed.get(names.PROJECTOR_PROPERTY)
    line += f"; Embedding Projector: {summary}" + (f", in {folder}" if folder else "")
  return line


# ---- the HTML report -----------------------------------------------------------
def write_html(
    output_dir: Optional[str] = None, path: Optional[str] = None, run_id: Optional[str] = None
) -> str:
  """Runs notebooks/pipeline_walkthrough.ipynb on a run (default: the
  newest under `output_dir`) and writes it as a static page without the code
  to `path` (default <output_dir>/report.html), each picture as a PNG into
  <path without .html>_figures/, and the executed notebook, code and outputs,
  to <path without .html>.ipynb (to open in Jupyter and go on from);
  returns the path."""
  import nbformat

  from models.files import write_atomically
  from pipeline import notebooks

  output_dir = output_dir or names.default_output_dir()
  path = path or os.path.join(output_dir, "report.html")
  nb = notebooks.execute(notebooks.WALKTHROUGH, output_dir, run_id)
  stem = os.path.splitext(path)[0]
  figures_dir = stem + "_figures"
  os.makedirs(figures_dir, exist_ok=True)
  for name, data in notebooks.pictures(nb).items():
    write_atomically(os.path.join(figures_dir, f"{name}.png"), data)
  write_atomically(stem + ".ipynb", nbformat.writes(nb))
  write_atomically(path, notebooks.to_html(nb))
  return path


def main(argv=None):
  """Prints a run's report; with --html also writes the HTML page and says where."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  add_output_dir_argument(p)
  p.add_argument(
      "--metadata", default=None, help="its MLMD database (default <output-dir>/metadata.sqlite)"
  )
  p.add_argument(
      "--pipeline-name",
      default=None,
      help="mae-tfx (CIFAR-10) or mae-tfx-<data set> (default: the newest run's)",
  )
  p.add_argument(
      "--run-id", default=None, help="which run (`pipeline.runs.list_runs`; default the newest)"
  )
  p.add_argument(
      "--html",
      nargs="?",
      const="",
      default=None,
      metavar="PATH",
      help="also write the HTML report (default <output-dir>/report.html)",
  )
  args = p.parse_args(argv)
  print(
      format_report(
          args.metadata or names.metadata_path(args.output_dir), args.pipeline_name, args.run_id
      )
  )
  if args.html is not None:
    print("HTML report:", write_html(args.output_dir, args.html or None, args.run_id))


if __name__ == "__main__":
  main()
