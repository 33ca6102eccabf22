"""The pipeline run span by span: CIFAR-10's train split cut into spans that
arrive one after the other, each ingested by a run as a scheduled job
starts it (`python -m pipeline.local_runner`, the newest span, a warm start
from the last blessed model), beside a from-scratch run on all the data
seen so far.

  python -m benchmarks.continuous --data ../shared/data/cifar10 \
      --work-dir /tmp/continuous [--spans 5] [--variant balanced|drift] \
      [--no-scratch] [--profile cpu] [--overrides JSON] \
      [--index-only-last] [--scale 1000000]

The spans are class-balanced slices of the train split, written as
TFRecords in <work-dir>/<variant>/arrivals/span-<N>/{train,test}/; each
span carries the full test split, so every figure is on the same 10,000
test images. `drift`: span 3 lacks two classes and span 4's colours are
shifted; the gate must stop both, naming what changed, and span 5 is then
compared with the data of the model still served (span 2's).

`--drift-only` runs no pipeline: it prints the drift comparators' values
(TFDV, the curated schema's thresholds) between consecutive balanced spans
and for the drifted ones, in seconds: how the thresholds were chosen.

Prints per span the wall time, the pretraining time, the linear probe and
k-NN (k = 20) test accuracy of the warm-started chain and of the
from-scratch run, the MAE's warm start and the gate's verdict; then the
chain's total pretraining time as a share of the from-scratch runs'.

Search after each run of the chain: the vectors and spans the served
index holds (every span accepted so far), its recall@10 against exact
search on held-out queries (and on those it was tuned on), and what the
CorpusEmbedder did (vectors added, reused, removed) in how long.
`--index-only-last` runs the last span first with a gate nobody passes (an
index-only update: the served model embeds the new span, the rest is
reused), then as usual (the new model re-embeds everything): the two at
the same corpus size. `--scale N` then times the index build over N
vectors (the served ones, tiled with small noise) and projects a full
re-embed of N images at the rate measured: what each kind of update costs
at that size.
"""

import argparse
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np

from benchmarks.host import host_line
from models import cifar10, names
from models.examples import ImageStatistics, image_example
from pipeline import data_source
from pipeline.run_outputs import RunOutputs

DRIFT_MISSING = (3, 5)  # cat, dog: absent from the drift variant's span 3
DRIFT_COLOUR = (1.25, 1.0, 0.8)  # span 4's R, G, B gains in the drift variant


def load_cifar10(source: str, cache: str):
  """(train images, train labels, test images, test labels, class names)."""
  folder = data_source.resolve_cifar10(source, cache)
  train, test = cifar10.read_split(folder, "train"), cifar10.read_split(folder, "test")
  return (*train, *test, cifar10.read_class_names(os.path.join(folder, "batches.meta")))


def span_indices(labels: np.ndarray, spans: int, seed: int = 0) -> List[np.ndarray]:
  """Class-balanced, disjoint slices of the train split, one per span."""
  rng = np.random.RandomState(seed)
  per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  return [
      np.sort(np.concatenate([np.array_split(idx, spans)[k] for idx in per_class]))
      for k in range(spans)
  ]


def write_records(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the images, PNG-encoded, with their labels to `path`: one GZIP
  TFRecord file of tf.Examples."""
  import tensorflow as tf

  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for image, label in zip(images, labels):
      example = image_example(cifar10.encode_png(image), int(label))
      writer.write(example.SerializeToString())


def write_dataset(root: str, train, train_labels, test, test_labels, class_names) -> None:
  """<root>/{train,test}/part-0.tfrecord.gz and class_names.txt (a TFRecord
  source with its splits given)."""
  write_records(os.path.join(root, "train", "part-0.tfrecord.gz"), train, train_labels)
  write_records(os.path.join(root, "test", "part-0.tfrecord.gz"), test, test_labels)
  with open(os.path.join(root, names.CLASS_NAMES_FILE), "w") as f:
    f.write("".join(f"{name}\n" for name in class_names))


def span_data(k: int, variant: str, images, labels):
  """Span k's (1-based) train images and labels, drifted as the variant says."""
  if variant == "drift" and k == 3:
    keep = ~np.isin(labels, DRIFT_MISSING)
    return images[keep], labels[keep]
  if variant == "drift" and k == 4:
    shifted = np.clip(images.astype(np.float32) * np.array(DRIFT_COLOUR), 0, 255)
    return shifted.astype(np.uint8), labels
  return images, labels


def drift_table(train, labels, class_names, slices) -> None:
  """The gate's comparison (`compare_statistics`, the curated schema) of
  each balanced span with the one before, and of the drift variant's spans
  3 and 4 with span 2, on TFDV statistics of the same features ExampleGen
  writes."""
  import pandas as pd
  import tensorflow_data_validation as tfdv
  from components.anomalies_gate import compare_statistics
  from models import schema as schema_lib

  schema = schema_lib.read_schema(names.SCHEMA_PATH)

  def statistics(images, span_labels):
    rows = [ImageStatistics.of_array(image) for image in images]
    frame = pd.DataFrame(
        {
            names.CLASS_NAME_KEY: [class_names[y] for y in span_labels],
            names.IMAGE_HEIGHT_KEY: [r.height for r in rows],
            names.IMAGE_WIDTH_KEY: [r.width for r in rows],
            **{
                key: [r.channel_means[c] for r in rows]
                for c, key in enumerate(names.CHANNEL_MEAN_KEYS)
            },
        }
    )
    return tfdv.generate_statistics_from_dataframe(frame)

  balanced = [statistics(train[idx], labels[idx]) for idx in slices]
  pairs = [
      (f"balanced span {k + 1} vs {k}", balanced[k], balanced[k - 1], k + 1, k)
      for k in range(1, len(slices))
  ]
  for k in (3, 4):
    images, span_labels = span_data(k, "drift", train[slices[k - 1]], labels[slices[k - 1]])
    pairs.append((f"drift span {k} vs 2", statistics(images, span_labels), balanced[1], k, 2))
  for title, current, previous, span, previous_span in pairs:
    result = compare_statistics(current, previous, schema, span, previous_span)
    print(
        f"{title}:\n  "
        + "\n  ".join(result.compared)
        + (f"\n  STOPPED: {len(result.problems)} problem(s)" if result.problems else "\n  passes"),
        flush=True,
    )


def run_pipeline(data: str, output: str, profile: str, log_path: str, *flags: str) -> Dict:
  """One `local_runner` run; its wall time, verdict and figures."""
  argv = [
      sys.executable,
      "-m",
      "pipeline.local_runner",
      "--profile",
      profile,
      "--data",
      data,
      "--output-dir",
      output,
      "--schema",
      os.path.join(output, "schema.pbtxt"),
      *flags,
  ]
  start = time.monotonic()
  with open(log_path, "w") as log:
    code = subprocess.run(
        argv, cwd=names.PROJECT_DIR, stderr=log, stdout=subprocess.DEVNULL, check=False
    ).returncode
  wall = time.monotonic() - start
  row = dict(wall=wall, ok=code == 0, log=log_path, stopped=None)
  if code:
    with open(log_path) as f:
      text = f.read()
    # What the gate said (each error line comes more than once in the log).
    lines = dict.fromkeys(
        line.strip() for line in text.splitlines() if "span" in line and " vs " in line
    )
    row["stopped"] = list(lines)[:3] or text.strip().splitlines()[-1:]
    return row
  run = RunOutputs.load(output)
  probe = run.summary(names.PROBE_TRAINER)
  row.update(
      pretrain=run.node(names.MAE_TRAINER)["seconds"],
      warm_start=run.summary(names.MAE_TRAINER)["warm_start"]["source"],
      lp=probe["eval_accuracy"],
      knn=probe["knn_accuracy"],
      blessed=run.blessed(),
  )
  return row


def search_row(output: str) -> Dict:
  """What the last run did for search and what the served index holds."""
  from models import search_index

  run = RunOutputs.load(output)
  embedder = run.node("CorpusEmbedder")
  corpus = embedder["output_properties"][names.EMBEDDINGS_TYPE][0]
  from components.versioned_pusher import newest_version

  serving = os.path.join(output, "serving_model")
  base = os.path.join(serving, os.listdir(serving)[0])  # the one pipeline of the chain
  newest = newest_version(base)
  index = search_index.load(os.path.join(base, newest, names.SEARCH_INDEX_DIR))
  evaluation = index.info["evaluation"]
  return dict(
      version=newest,
      vectors=len(index),
      spans=",".join(sorted(set(index.records.spans), key=int)),
      recall=evaluation["recall_at_k"],
      tune_recall=evaluation.get("tune_recall_at_k", float("nan")),
      kind=index.kind,
      embed_seconds=embedder["seconds"],
      index_seconds=run.node("SearchIndexer")["seconds"],
      case=corpus.get("case", ""),
      added=int(corpus.get("added", 0)),
      reused=int(corpus.get("reused", 0)),
      removed=int(corpus.get("removed", 0)),
      index_dir=os.path.join(base, newest, names.SEARCH_INDEX_DIR),
  )


def _search_line(label: str, row: Dict) -> str:
  return (
      f"{label:>14s} | {row['vectors']:7d} {row['spans']:>9s} {row['kind']:>6s} "
      f"{row['recall']:.4f} ({row['tune_recall']:.4f}) | {row['added']:6d} {row['reused']:6d} "
      f"{row['removed']:4d} {row['embed_seconds']:7.1f} s {row['index_seconds']:6.1f} s | "
      f"{row['case']}"
  )


def scale_figures(index_dir: str, size: int, full: Dict, index_only: Dict) -> None:
  """Times the index build over `size` vectors made from the served ones
  and prints each kind of update's cost at that size: the index-only one
  embeds a span and rebuilds, the full one re-embeds every image."""
  from models import search_index
  from models.config import SearchConfig

  served = search_index.load(index_dir)
  base = np.asarray(served.vectors, np.float32)
  rng = np.random.default_rng(0)
  tiles = [base]
  while sum(len(t) for t in tiles) < size:
    tiles.append(base + rng.normal(0, 0.02, base.shape).astype(np.float32))
  vectors = np.concatenate(tiles)[:size]
  records = search_index.Records([f"v/{i}" for i in range(size)], np.full(size, ""))
  start = time.monotonic()
  index = search_index.build(vectors, records, SearchConfig(), base[:2000])
  build = time.monotonic() - start
  rate = full["added"] / max(full["embed_seconds"], 1e-9)  # images a second, the new model
  span_images = index_only["added"]
  print(
      f"\nat {size:,} vectors: {index.kind} index built, tuned and scored in {build:.0f} s "
      "(on tiled copies of the served vectors: a time, not a quality figure); embedding at "
      f"{rate:.0f} images/s (the full re-embed of {full['added']:,})"
  )
  print(
      f"  index-only update (embed a span of {span_images:,}, rebuild): about "
      f"{span_images / rate + build:.0f} s; full re-embed of {size:,} images and rebuild: "
      f"about {size / rate + build:.0f} s"
  )


def _cell(row: Optional[Dict]) -> str:
  if row is None:
    return f"{'':>39s}"
  if not row["ok"]:
    return f"{'stopped by the gate':>39s}"
  return (
      f"{row['wall']:8.0f} s {row['pretrain']:8.0f} s {100 * row['lp']:6.2f} "
      f"{100 * row['knn']:6.2f}{' ' if row['blessed'] else '*'}"
  )


def main(argv=None):
  """Runs the warm-started chain span by span (and the from-scratch runs
  beside it) and prints each span's times, accuracies and gate verdict;
  `--drift-only` prints the drift comparators' values instead."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
      "--data", default=os.environ.get(names.CIFAR10_ENV), help="CIFAR-10 (as for make pipeline)"
  )
  p.add_argument("--work-dir", required=True)
  p.add_argument("--spans", type=int, default=5)
  p.add_argument("--variant", choices=["balanced", "drift"], default="balanced")
  p.add_argument("--profile", default="cpu")
  p.add_argument(
      "--overrides",
      default="{}",
      help="JSON {section: {field: value}} over the profile, for every run "
      '(as local_runner\'s), e.g. \'{"pretrain": {"span_window": 0}}\'',
  )
  p.add_argument("--no-scratch", action="store_true", help="only the warm-started chain")
  p.add_argument(
      "--max-spans",
      type=int,
      default=None,
      help="run only the first N spans (a quick check of the benchmark)",
  )
  p.add_argument(
      "--index-only-last",
      action="store_true",
      help="run the last span first with a gate nobody passes (an index-only update), "
      "then as usual (a full re-embed)",
  )
  p.add_argument(
      "--scale",
      type=int,
      default=0,
      help="then time the index build at this many vectors (e.g. 1000000)",
  )
  p.add_argument(
      "--drift-only",
      action="store_true",
      help="only the drift comparators' values between spans, no pipeline",
  )
  args = p.parse_args(argv)
  print(host_line(), flush=True)
  work = os.path.abspath(os.path.join(args.work_dir, args.variant))
  train, train_labels, test, test_labels, class_names = load_cifar10(
      args.data, os.path.join(args.work_dir, "cache")
  )
  slices = span_indices(train_labels, args.spans)
  if args.drift_only:
    drift_table(train, train_labels, class_names, slices)
    return
  arrivals = os.path.join(work, "arrivals")
  seen_images, seen_labels = [], []
  table, search = [], []
  last = len(slices[: args.max_spans])

  def chain_run(log_name: str, *flags: str) -> Dict:
    """One run of the warm-started chain on the spans so far."""
    return run_pipeline(
        arrivals,
        os.path.join(work, "chain"),
        args.profile,
        os.path.join(work, log_name),
        "--overrides",
        args.overrides,
        *flags,
    )

  for k, idx in enumerate(slices[: args.max_spans], start=1):
    images, labels = span_data(k, args.variant, train[idx], train_labels[idx])
    write_dataset(
        os.path.join(arrivals, f"span-{k}"), images, labels, test, test_labels, class_names
    )
    if args.index_only_last and k == last:
      # A gate nobody passes: the served model's index extended by this span.
      unblessed = chain_run(f"chain-span-{k}-unblessed.log", "--min-accuracy", "1.01")
      if unblessed["ok"]:
        search.append((f"span {k}, unblessed", search_row(os.path.join(work, "chain"))))
        print(_search_line(*search[-1]), flush=True)
    warm = chain_run(f"chain-span-{k}.log")
    scratch = None
    if warm["ok"]:
      search.append((f"span {k}", search_row(os.path.join(work, "chain"))))
      print(_search_line(*search[-1]), flush=True)
      seen_images.append(images)
      seen_labels.append(labels)
    if k == 1:
      scratch = warm  # the first span: the chain's run is from scratch on it
    elif not args.no_scratch and warm["ok"]:
      # All the data seen so far, as one source, in a fresh output folder.
      seen = os.path.join(work, f"scratch-{k}", "seen")
      write_dataset(
          seen,
          np.concatenate(seen_images),
          np.concatenate(seen_labels),
          test,
          test_labels,
          class_names,
      )
      scratch = run_pipeline(
          seen,
          os.path.join(work, f"scratch-{k}", "out"),
          args.profile,
          os.path.join(work, f"scratch-span-{k}.log"),
          "--overrides",
          args.overrides,
      )
    table.append((k, len(labels), warm, scratch))
    print(
        f"span {k}: {len(labels)} train images; warm chain: "
        + (
            f"LP {warm['lp']:.4f} k-NN {warm['knn']:.4f} in {warm['wall']:.0f} s, warm start "
            f"from {warm['warm_start']}"
            if warm["ok"]
            else f"stopped: {warm['stopped']}"
        )
        + (
            f"; from scratch: LP {scratch['lp']:.4f} k-NN {scratch['knn']:.4f} in "
            f"{scratch['wall']:.0f} s"
            if scratch and scratch["ok"]
            else ""
        ),
        flush=True,
    )

  print(
      f"\n{host_line()}\nprofile {args.profile}, overrides {args.overrides}, "
      f"variant {args.variant}, "
      "accuracies on the full CIFAR-10 test split (%)"
  )
  print(
      f"{'span':>4s} {'train':>6s} | {'warm chain: wall, pretrain, LP, k-NN':>39s} | "
      f"{'from scratch on all seen: same':>39s}"
  )
  for k, n, warm, scratch in table:
    print(f"{k:4d} {n:6d} | {_cell(warm)} | {_cell(scratch)}")
  print("* not blessed")
  for k, _, warm, _ in table:
    if not warm["ok"]:
      print(f"span {k} stopped:\n  " + "\n  ".join(warm["stopped"]))
  print(
      f"\nsearch, after each run of the warm chain: the served index\n"
      f"{'run':>14s} | {'vectors':>7s} {'spans':>9s} {'kind':>6s} recall@10 (tuned on) | "
      f"{'added':>6s} {'reused':>6s} {'rem.':>4s} {'embed':>9s} {'index':>8s} | case"
  )
  for label, row in search:
    print(_search_line(label, row))
  unblessed = [row for label, row in search if label.endswith("unblessed")]
  if args.scale and unblessed and search[-1][1]["added"]:
    scale_figures(search[-1][1]["index_dir"], args.scale, search[-1][1], unblessed[-1])
  done = [(w, s) for _, _, w, s in table if w["ok"] and s and s["ok"]]
  if done:
    warm_total = sum(w["pretrain"] for w, _ in done)
    scratch_total = sum(s["pretrain"] for _, s in done)
    last_w, last_s = done[-1]
    print(
        f"pretraining time: warm chain {warm_total:.0f} s, from scratch {scratch_total:.0f} s "
        f"({100 * warm_total / scratch_total:.0f} %); last span: LP "
        f"{100 * (last_w['lp'] - last_s['lp']):+.2f} points, k-NN "
        f"{100 * (last_w['knn'] - last_s['knn']):+.2f} points against from scratch"
    )


if __name__ == "__main__":
  main()
