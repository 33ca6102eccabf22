"""Peak memory of MAE pretraining against the number of training images.

  python -m benchmarks.pretrain_memory --examples 10000,50000 --memory-budget-mb 0
  python -m benchmarks.pretrain_memory --examples 50000       # the profile's budget

Each N runs in a fresh process (peak RSS is per process): the MAE Trainer's
own input path (`data.training_images`: held in memory within the budget,
streamed beyond it) and `engine_pretrain.pretrain`, for `--epochs` epochs of
the `cpu` profile on the first N train examples of the newest `make
pipeline` run. Prints N, the path taken, the peak RSS and the img/s of the
last epoch (the first includes tracing and XLA compilation).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
from models import names


def one_run(args) -> dict:
  """Pretrains in this process on the first `args.examples` train examples,
  fed as the MAE Trainer feeds them; the image count, whether they were
  streamed, the memory budget, the last epoch's img/s and the peak RSS (MB)."""
  import tensorflow_transform as tft
  from models import config as config_lib
  from models import data
  from models.engine_pretrain import pretrain
  from pipeline.runs import pipeline_inputs

  examples, transform = pipeline_inputs(args.metadata)
  cfg = config_lib.get_profile(args.profile, {"pretrain": {"epochs": args.epochs}})
  budget = cfg.data.memory_budget_mb if args.memory_budget_mb is None else args.memory_budget_mb
  images = data.training_images(
      names.split_files(examples, "train"),
      tft.TFTransformOutput(transform),
      budget,
      cfg.data.shuffle_buffer,
      args.examples,
  )
  with tempfile.TemporaryDirectory() as tmp:
    _, history = pretrain(cfg, images, tmp, os.path.join(tmp, "ckpt"))
  return {
      "examples": images.count,
      "streamed": images.streamed,
      "memory_budget_mb": budget,
      "img_per_s": history[-1]["images_per_second"],
      # ru_maxrss is in KiB on Linux.
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def main(argv=None):
  """Runs each `--examples` N in a fresh process and prints the input path
  taken, the peak RSS and the last epoch's img/s; with `--one`, is that
  process and prints its figures as one `RESULT <json>` line."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--examples", default="10000,50000", help="comma-separated N")
  p.add_argument(
      "--memory-budget-mb",
      type=float,
      default=None,
      help="0: always stream (default: the profile's data.memory_budget_mb)",
  )
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--profile", default="cpu")
  p.add_argument(
      "--metadata", default=names.metadata_path(), help="MLMD database of the run whose data to use"
  )
  p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.one:
    args.examples = int(args.examples)
    print("RESULT " + json.dumps(one_run(args)), flush=True)
    return
  rows = []
  for n in [int(v) for v in args.examples.split(",")]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.pretrain_memory",
        "--one",
        "--examples",
        str(n),
        "--epochs",
        str(args.epochs),
        "--profile",
        args.profile,
        "--metadata",
        args.metadata,
    ]
    if args.memory_budget_mb is not None:
      cmd += ["--memory-budget-mb", str(args.memory_budget_mb)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=names.PROJECT_DIR)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not lines:
      raise SystemExit(f"N={n} failed:\n{run.stderr[-3000:]}")
    rows.append(json.loads(lines[-1][len("RESULT ") :]))
    r = rows[-1]
    print(
        f"N={r['examples']:6d}  {'streamed' if r['streamed'] else 'in memory':9s}  "
        f"peak RSS {r['peak_rss_mb']:6.0f} MB  {r['img_per_s']:5.0f} img/s",
        flush=True,
    )
  print("summary:")
  for r in rows:
    print(
        f"  {r['examples']:6d} images, {'streamed' if r['streamed'] else 'in memory'} "
        f"(budget {r['memory_budget_mb']:g} MB): peak RSS {r['peak_rss_mb']:.0f} MB, "
        f"{r['img_per_s']:.0f} img/s (last epoch)"
    )


if __name__ == "__main__":
  main()
