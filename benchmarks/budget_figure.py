"""Accuracy against pretraining wall-clock: a figure of measured points.

  python -m benchmarks.budget_figure benchmarks/figures/issue37_budget.json \
      [--out benchmarks/figures/issue37_budget.png]

The JSON holds {"host": "...", "points": [{"recipe": name, "minutes":
pretraining wall-clock, "lp": top-1, "knn": 20-NN top-1, "how": the command
or run}, ...]}, each point measured (`benchmarks.probe_quality` prints the
pretraining seconds and both accuracies; a pipeline run's are in its
log). The figure has two panels, linear probe and k-NN against minutes, one
line per recipe; the table of the points is printed.
"""

import argparse
import json
import os
import sys
from collections import defaultdict


def main(argv=None):
  """Prints the points' table and writes the figure."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("points", help="the JSON of measured points")
  p.add_argument("--out", default=None, help="the PNG (default: beside the JSON)")
  args = p.parse_args(argv)

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with open(args.points) as f:
    data = json.load(f)
  by_recipe = defaultdict(list)
  print(f"host: {data['host']}")
  print("| recipe | pretraining min | LP | 20-NN |")
  print("| --- | --- | --- | --- |")
  for point in sorted(data["points"], key=lambda q: (q["recipe"], q["minutes"])):
    by_recipe[point["recipe"]].append(point)
    print(
        f"| {point['recipe']} | {point['minutes']:.1f} | {100 * point['lp']:.2f} % | "
        f"{100 * point['knn']:.2f} % |"
    )
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
  for ax, key, title in ((axes[0], "lp", "linear probe"), (axes[1], "knn", "k-NN (k = 20)")):
    for recipe, points in by_recipe.items():
      xs = [q["minutes"] for q in points]
      ys = [100 * q[key] for q in points]
      ax.plot(xs, ys, "o-" if len(points) > 1 else "o", label=recipe)
    ax.set_title(f"{title}, CIFAR-10 test top-1")
    ax.set_xlabel("MAE pretraining, minutes (2 cores)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8, loc="lower right")
  fig.suptitle(data["host"], fontsize=8)
  fig.tight_layout()
  out = args.out or os.path.splitext(args.points)[0] + ".png"
  fig.savefig(out, dpi=100)
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
