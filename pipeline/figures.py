"""Pictures of a pipeline run (`pipeline.run_outputs.RunOutputs`), one
function a figure, each returning a matplotlib Figure: the notebooks show
them, `make report` embeds them in a static HTML page (`png`).

Figures are built without pyplot, so making many (the report) keeps no
global state and needs no display.
"""

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from models import names

STATE_COLOURS = {
    "COMPLETE": "#8fd19e",
    "CACHED": "#9ecae1",
    "FAILED": "#f28e8e",
    "RUNNING": "#fdd49e",
    "CANCELED": "#d9d9d9",
}
_CLASS_COLOURS = "tab10"


def png(fig: Figure, dpi: int = 100) -> bytes:
  """`fig` as PNG bytes, cropped to what it draws (the report embeds them)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
  return buf.getvalue()


def _decode(image: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def _class_colour(i: int, n: int):
  from matplotlib import colormaps

  cmap = colormaps[_CLASS_COLOURS if n <= 10 else "tab20"]
  return cmap(i % cmap.N)


# ---- the run ----------------------------------------------------------------
def transitive_reduction(edges: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
  """The edges not implied by a longer path (graphviz's `tred`): a DAG
  drawn with these alone shows its order without a tangle."""
  successors: Dict[str, set] = {}
  for a, b in edges:
    successors.setdefault(a, set()).add(b)

  def implied(a: str, b: str) -> bool:
    """B is reachable from a without the edge a -> b."""
    stack = [n for n in successors[a] if n != b]
    seen = set(stack)
    while stack:
      n = stack.pop()
      if n == b:
        return True
      for m in successors.get(n, set()) - seen:
        seen.add(m)
        stack.append(m)
    return False

  return sorted((a, b) for a, b in set(edges) if not implied(a, b))


def _layers(nodes: Sequence[str], edges: Sequence[Tuple[str, str]]) -> Dict[str, int]:
  """Each node's row: the longest path that reaches it; a node nothing
  feeds sits just above its first consumer."""
  layer = {n: 0 for n in nodes}
  for _ in nodes:
    for a, b in edges:
      layer[b] = max(layer[b], layer[a] + 1)
  fed = {b for _, b in edges}
  for n in nodes:
    consumers = [layer[b] for a, b in edges if a == n]
    if n not in fed and consumers:
      layer[n] = min(consumers) - 1
  return layer


def dag(executions: List[Dict], edges: Sequence[Tuple[str, str]]) -> Figure:
  """The DAG top to bottom, each node with its state (colour) and wall
  time; edges a longer path implies are left out."""
  nodes = [r["node"] for r in executions]
  by_node = {r["node"]: r for r in executions}
  edges = transitive_reduction([e for e in edges if set(e) <= set(nodes)])
  layer = _layers(nodes, edges)
  rows: Dict[int, List[str]] = {}
  for n in nodes:
    rows.setdefault(layer[n], []).append(n)
  width = max(len(r) for r in rows.values())
  pos = {n: (i - (len(row) - 1) / 2, -y) for y, row in rows.items() for i, n in enumerate(row)}
  fig = Figure(figsize=(2.5 * width + 0.5, 0.75 * len(rows) + 0.6))
  ax = fig.subplots()
  for a, b in edges:
    (x0, y0), (x1, y1) = pos[a], pos[b]
    ax.annotate(
        "",
        xy=(x1, y1 + 0.28),
        xytext=(x0, y0 - 0.28),
        arrowprops=dict(arrowstyle="->", color="#666", lw=0.9),
    )
  for n, (x, y) in pos.items():
    r = by_node[n]
    ax.text(
        x,
        y,
        f"{n}\n{r['state'].lower()}, {r['seconds']:.1f} s",
        ha="center",
        va="center",
        fontsize=8,
        bbox=dict(boxstyle="round,pad=0.35", lw=0.6, fc=STATE_COLOURS.get(r["state"], "white")),
    )
  ax.set_xlim(-width / 2, width / 2)
  ax.set_ylim(-max(rows) - 0.5, 0.5)
  ax.axis("off")
  total = sum(r["seconds"] for r in executions)
  ax.set_title(
      f"The run's DAG: each execution's state and wall time (sum {total:.0f} s)", fontsize=10
  )
  return fig


def timeline(executions: List[Dict]) -> Figure:
  """When each execution ran, from the run's first start."""
  start = min(r["started"] for r in executions)
  fig = Figure(figsize=(9, 0.32 * len(executions) + 1))
  ax = fig.subplots()
  for i, r in enumerate(executions):
    ax.barh(
        i,
        (r["ended"] - r["started"]) / 1e3,
        left=(r["started"] - start) / 1e3,
        color=STATE_COLOURS.get(r["state"], "white"),
        edgecolor="#555",
        lw=0.5,
    )
    ax.text((r["ended"] - start) / 1e3, i, f" {r['seconds']:.1f} s", va="center", fontsize=7)
  ax.set_yticks(range(len(executions)), [r["node"] for r in executions], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel("seconds since the run started")
  ax.set_title("Timeline", fontsize=10)
  return fig


# ---- the data -----------------------------------------------------------------
def class_counts(
    statistics: Dict[str, object], class_names: List[str], feature: str = "class_name"
) -> Figure:
  """Examples per class in each split, from StatisticsGen's statistics
  ({split: DatasetFeatureStatisticsList})."""
  fig = Figure(figsize=(9, 3.2))
  ax = fig.subplots()
  width = 0.8 / max(len(statistics), 1)
  for s, (split, stats) in enumerate(sorted(statistics.items())):
    dataset = stats.datasets[0]
    counts = {}
    for f in dataset.features:
      if f.path.step == [feature]:
        counts = {b.label: b.sample_count for b in f.string_stats.rank_histogram.buckets}
    ax.bar(
        np.arange(len(class_names)) + s * width,
        [counts.get(c, 0) for c in class_names],
        width,
        label=f"{split} ({dataset.num_examples} examples)",
    )
  ax.set_xticks(
      np.arange(len(class_names)) + width * (len(statistics) - 1) / 2,
      class_names,
      rotation=30,
      ha="right",
      fontsize=8,
  )
  ax.set_ylabel("examples")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  ax.set_title("Examples per class (StatisticsGen)", fontsize=10)
  return fig


def statistics_table(statistics: Dict[str, object]):
  """One row a (split, feature) of StatisticsGen's statistics: what TFDV's
  Facets view shows, as a table that renders anywhere (pandas)."""
  import pandas as pd

  rows = []
  for split, stats in sorted(statistics.items()):
    dataset = stats.datasets[0]
    for f in dataset.features:
      row = {
          "split": split,
          "feature": "/".join(f.path.step),
          "type": _type_name(f.type),
          "examples": dataset.num_examples,
      }
      if f.HasField("num_stats"):
        n = f.num_stats
        row.update(missing=n.common_stats.num_missing, min=n.min, mean=round(n.mean, 3), max=n.max)
      elif f.HasField("string_stats"):
        t = f.string_stats
        row.update(
            missing=t.common_stats.num_missing,
            unique=t.unique,
            **{"avg length": round(t.avg_length, 1)},
        )
        # TFDV shows binary values (encoded images) as a placeholder only.
        top = [v.value for v in t.top_values[:3] if v.value != "__BYTES_VALUE__"]
        if top:
          row["top values"] = ", ".join(top)
      elif f.HasField("bytes_stats"):
        b = f.bytes_stats
        row.update(
            missing=b.common_stats.num_missing,
            unique=b.unique,
            **{"avg length": round(b.avg_num_bytes, 1)},
        )
      rows.append(row)
  return pd.DataFrame(rows).fillna("")


def _type_name(feature_type: int) -> str:
  from tensorflow_metadata.proto.v0 import statistics_pb2

  return statistics_pb2.FeatureNameStatistics.Type.Name(feature_type)


def channel_statistics(mean: np.ndarray, std: np.ndarray) -> Figure:
  """Transform's per-channel mean and std (pixels in [0, 1])."""
  fig = Figure(figsize=(4, 2.6))
  ax = fig.subplots()
  colours = ["#d62728", "#2ca02c", "#1f77b4"]
  ax.bar(range(3), mean, yerr=std, color=colours, capsize=6, alpha=0.8)
  for c in range(3):
    ax.text(c, mean[c] + std[c] + 0.03, f"{mean[c]:.3f}\n± {std[c]:.3f}", ha="center", fontsize=8)
  ax.set_xticks(range(3), ["red", "green", "blue"])
  ax.set_ylim(0, 1.05)
  ax.set_title("Transform: channel mean ± std", fontsize=10)
  return fig


# ---- training ---------------------------------------------------------------------
def training_curves(mae_history: List[Dict], probe_history: Optional[List[Dict]] = None) -> Figure:
  """MAE loss, learning rate and throughput per epoch; the probe's accuracy."""
  panels = 4 if probe_history else 3
  fig = Figure(figsize=(3.3 * panels, 2.8))
  axes = fig.subplots(1, panels)
  epochs = [h["epoch"] for h in mae_history]
  for ax, key, title in zip(
      axes,
      ("loss", "lr", "images_per_second"),
      ("MAE loss", "learning rate (end of epoch)", "MAE images/s"),
  ):
    ax.plot(epochs, [h[key] for h in mae_history], "o-", ms=3)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  if probe_history:
    ax = axes[3]
    epochs = [h["epoch"] for h in probe_history]
    ax.plot(epochs, [h["accuracy"] for h in probe_history], label="train")
    ax.plot(epochs, [h["val_accuracy"] for h in probe_history], label="test")
    ax.set_title("linear probe accuracy", fontsize=10)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def reconstructions(grid_png: bytes) -> Figure:
  """The MAE's reconstruction grid, its rows named."""
  grid = _decode(grid_png)
  fig = Figure(figsize=(grid.shape[1] / 90, grid.shape[0] / 90 + 0.3))
  ax = fig.subplots()
  ax.imshow(grid, interpolation="nearest")
  third = grid.shape[0] / 3
  ax.set_yticks(
      [third * (i + 0.5) for i in range(3)], ["original", "masked", "reconstruction"], fontsize=8
  )
  ax.set_xticks([])
  ax.set_title("What the MAE reconstructs (test images)", fontsize=10)
  return fig


# ---- evaluation -------------------------------------------------------------------
def accuracy_by_class(
    accuracy: Dict[str, Dict[str, float]], class_names: List[str], feature: str = "class_name"
) -> Figure:
  """TFMA's accuracy per class of each classifier ({output: {slice: acc}}),
  with the overall accuracy as a line."""
  fig = Figure(figsize=(9, 3.4))
  ax = fig.subplots()
  outputs = sorted(accuracy, key=lambda o: (o != "probabilities", o))
  width = 0.8 / max(len(outputs), 1)
  for i, output in enumerate(outputs):
    values = [accuracy[output].get(f"{feature}={c}", np.nan) for c in class_names]
    name = names.CLASSIFIER_TITLES.get(output, output)
    bars = ax.bar(
        np.arange(len(class_names)) + i * width,
        values,
        width,
        label=f"{name}: overall {accuracy[output].get('overall', np.nan):.3f}",
    )
    ax.axhline(
        accuracy[output].get("overall", np.nan), color=bars[0].get_facecolor(), ls="--", lw=1
    )
  ax.set_xticks(
      np.arange(len(class_names)) + width * (len(outputs) - 1) / 2,
      class_names,
      rotation=30,
      ha="right",
      fontsize=8,
  )
  ax.set_ylim(0, 1)
  ax.set_ylabel("test accuracy")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  ax.set_title("TFMA: test accuracy per class (dashed: overall)", fontsize=10)
  return fig


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, class_names: List[str]) -> Figure:
  """Rows: true class; columns: predicted; each row as fractions of the class."""
  n = len(class_names)
  counts = np.zeros([n, n], np.int64)
  np.add.at(counts, (labels, predicted), 1)
  rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  fig = Figure(figsize=(6.5, 5.5))
  ax = fig.subplots()
  image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  for i in range(n):
    for j in range(n):
      if counts[i, j]:
        ax.text(
            j,
            i,
            f"{rates[i, j]:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if rates[i, j] > 0.5 else "black",
        )
  ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(n), class_names, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  fig.colorbar(image, ax=ax, fraction=0.046)
  ax.set_title(
      f"Linear probe confusion matrix ({len(labels)} test images, "
      f"accuracy {np.trace(counts) / max(len(labels), 1):.3f})",
      fontsize=10,
  )
  return fig


def knn_table(summary: Dict):
  """The linear_probe Trainer's test accuracies (its train_summary.json):
  the linear probe and k-NN on the served (whitened) embedding and before
  whitening, as a pandas table."""
  import pandas as pd

  rows = (
      [("linear probe", summary["eval_accuracy"])]
      + [(f"{k}-NN, the served (whitened) embedding", v) for k, v in summary["knn"].items()]
      + [
          (f"{k}-NN, pooled tokens before whitening", v)
          for k, v in summary.get("knn_unwhitened", {}).items()
      ]
  )
  return pd.DataFrame(rows, columns=["classifier", "test accuracy"]).round(4)


def probe_accuracies(summaries: Dict[str, Dict]) -> Figure:
  """Linear and k-NN accuracy of the same probe on different encoders
  ({encoder: linear_probe summary}), e.g. pretrained vs random init."""
  metrics = [("linear", lambda s: s["eval_accuracy"])] + [
      (f"{k}-NN", lambda s, k=k: s["knn"][k]) for k in next(iter(summaries.values()))["knn"]
  ]
  fig = Figure(figsize=(6, 3))
  ax = fig.subplots()
  width = 0.8 / len(summaries)
  for i, (name, summary) in enumerate(summaries.items()):
    values = [get(summary) for _, get in metrics]
    bars = ax.bar(np.arange(len(metrics)) + i * width, values, width, label=name)
    ax.bar_label(bars, [f"{v:.3f}" for v in values], fontsize=7)
  ax.set_xticks(np.arange(len(metrics)) + width * (len(summaries) - 1) / 2, [m for m, _ in metrics])
  ax.set_ylim(0, 1)
  ax.set_ylabel("test accuracy")
  ax.legend(fontsize=8)
  example = next(iter(summaries.values()))
  ax.set_title(
      f"The same probe on {example['train_examples']} train / "
      f"{example['eval_examples']} test images",
      fontsize=10,
  )
  return fig


# ---- embeddings ---------------------------------------------------------------------
def embedding_map(
    embeddings: np.ndarray, labels: np.ndarray, class_names: List[str], seed: int = 0
) -> Figure:
  """A t-SNE map (scikit-learn; cosine distances, PCA start) of the
  embeddings, one colour a class, each class named at its median point."""
  from sklearn.manifold import TSNE

  perplexity = min(30.0, (len(embeddings) - 1) / 3)
  xy = TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(
      embeddings.astype(np.float32)
  )
  fig = Figure(figsize=(7, 6.5))
  ax = fig.subplots()
  n = len(class_names)
  for c, name in enumerate(class_names):
    points = xy[labels == c]
    if not len(points):
      continue
    ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, color=_class_colour(c, n), label=name)
    mx, my = np.median(points, axis=0)
    ax.text(
        mx,
        my,
        name,
        fontsize=9,
        weight="bold",
        ha="center",
        bbox=dict(fc="white", alpha=0.7, lw=0, pad=1),
    )
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(fontsize=7, markerscale=3, loc="best", ncols=2)
  ax.set_title(f"Test embeddings, t-SNE ({len(embeddings)} images)", fontsize=10)
  return fig


def image_grid(
    rows: List[List[bytes]],
    titles: List[List[str]],
    ok: Optional[List[List[Optional[bool]]]] = None,
    title: str = "",
    row_labels: Optional[List[str]] = None,
) -> Figure:
  """Encoded images in rows, a caption under each; a green (True) or red
  (False) frame where `ok` says."""
  n_rows, n_cols = len(rows), max(len(r) for r in rows)
  fig = Figure(figsize=(1.15 * n_cols, 1.35 * n_rows + 0.4))
  axes = np.array(fig.subplots(n_rows, n_cols, squeeze=False))
  for i in range(n_rows):
    for j in range(n_cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j >= len(rows[i]):
        ax.axis("off")
        continue
      ax.imshow(_decode(rows[i][j]), interpolation="nearest")
      ax.set_xlabel(titles[i][j], fontsize=6.5)
      good = ok[i][j] if ok else None
      for spine in ax.spines.values():
        spine.set_color({True: "#2ca02c", False: "#d62728"}.get(good, "#999"))
        spine.set_linewidth(2.5 if good is not None else 0.5)
    if row_labels:
      axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def one_per_class(labels: np.ndarray, classes: int) -> List[int]:
  """The index of the first example of each class present."""
  return [int(np.flatnonzero(labels == c)[0]) for c in range(classes) if (labels == c).any()]


def nearest_neighbours(
    queries, bank, class_names: List[str], query_ids: Optional[Sequence[int]] = None, k: int = 8
) -> Figure:
  """Each query image (a row; default: the first of each class) and its k
  nearest bank images by cosine similarity of their embeddings; `queries`
  and `bank` have .images, .labels and .embeddings
  (`run_outputs.Predictions`). A green frame: the neighbour's class is the
  query's."""
  from models.evaluation import l2_normalise

  query_ids = (
      one_per_class(queries.labels, len(class_names)) if query_ids is None else list(query_ids)
  )
  similarity = l2_normalise(queries.embeddings[query_ids]) @ l2_normalise(bank.embeddings).T
  nearest = np.argsort(-similarity, axis=1)[:, :k]
  rows, titles, ok = [], [], []
  for row, q in enumerate(query_ids):
    label = queries.labels[q]
    rows.append([queries.images[q]] + [bank.images[j] for j in nearest[row]])
    titles.append(
        [f"query: {class_names[label]}"]
        + [f"{class_names[bank.labels[j]]} {similarity[row, j]:.2f}" for j in nearest[row]]
    )
    ok.append([None] + [bool(bank.labels[j] == label) for j in nearest[row]])
  return image_grid(
      rows,
      titles,
      ok,
      title=f"Nearest neighbours among {len(bank.labels)} "
      "train images (cosine similarity of the served embedding)",
  )


def search_results(
    query_images: List[bytes],
    query_classes: List[str],
    hits: List[List[Dict]],
    images: Dict[str, bytes],
    title: str,
) -> Figure:
  """Each query image (a row) and its hits (`SearchIndex.search` results:
  id, class_name, score), drawn from `images` by id; a green frame: the
  hit's class is the query's."""
  rows, titles, ok = [], [], []
  for image, query_class, found in zip(query_images, query_classes, hits):
    rows.append([image] + [images[hit["id"]] for hit in found])
    titles.append(
        [f"query: {query_class}"] + [f"{hit['class_name']} {hit['score']:.2f}" for hit in found]
    )
    ok.append([None] + [hit["class_name"] == query_class for hit in found])
  return image_grid(rows, titles, ok, title=title)


def image_pairs(pairs: List[Tuple[bytes, bytes, str]], title: str, per_row: int = 4) -> Figure:
  """(image a, image b, caption) pairs side by side, `per_row` pairs a row;
  the caption goes under the first of the pair."""
  if not pairs:
    fig = Figure(figsize=(6, 0.8))
    fig.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
    return fig
  rows, titles = [], []
  for start in range(0, len(pairs), per_row):
    chunk = pairs[start : start + per_row]
    rows.append([image for a, b, _ in chunk for image in (a, b)])
    titles.append([text for _, _, caption in chunk for text in (caption, "")])
  return image_grid(rows, titles, title=title)


def confident_mistakes(
    predictions, class_names: List[str], n: int = 16, per_row: int = 8
) -> Figure:
  """The `n` test images the linear probe got wrong with the highest
  probability: true class, predicted class and its probability."""
  predicted = predictions.probabilities.argmax(1)
  confidence = predictions.probabilities.max(1)
  wrong = np.flatnonzero(predicted != predictions.labels)
  worst = wrong[np.argsort(-confidence[wrong])][:n]
  images = [predictions.images[i] for i in worst]
  captions = [
      f"{class_names[predictions.labels[i]]}\n→ {class_names[predicted[i]]} {confidence[i]:.2f}"
      for i in worst
  ]
  rows = [images[i : i + per_row] for i in range(0, len(images), per_row)] or [[]]
  titles = [captions[i : i + per_row] for i in range(0, len(captions), per_row)] or [[]]
  return image_grid(
      rows,
      titles,
      title=f"The probe's most confident mistakes "
      f"({len(wrong)} wrong of {len(predicted)}): true → predicted, probability",
  )
