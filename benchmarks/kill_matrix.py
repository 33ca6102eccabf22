"""Kill the local pipeline at each step with SIGKILL, re-run the same
command, and tabulate what the re-run did.

  python -m benchmarks.kill_matrix --data ../shared/data/cifar10 [--points mae_epoch,pusher_copy]

Each kill point starts `pipeline.local_runner` (profile `smoke` with 4 MAE
epochs, on the first 2,560 train and 500 test images of CIFAR-10; --mae-epochs,
--train, --test change these) in a fresh output folder, kills its process
group with SIGKILL at that point, runs the same command again to the end, and
reports: the re-run's exit status and time, where the MAE resumed from, the
pushed versions and staging folders left, and MLMD's states of both runs. One
uninterrupted run is the reference for the MAE's final weights
(--reference-dir: the output folder of one already run).

Points found by watching MLMD (a node's execution RUNNING) or the log are
killed from outside; two need the kill at an exact instant, so the child
kills itself there (fault injection in this script only, not in the
product): `mae_checkpoint_write` truncates the newest checkpoint's data
file as a torn write would, then dies; `pusher_copy` dies after copying the
model into its staging folder, before the rename.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np

from models import names

POINTS = (
    "example_gen",
    "transform",
    "mae_epoch",
    "mae_checkpoint_write",
    "linear_probe",
    "evaluator",
    "pusher_copy",
)
# point -> (node whose RUNNING execution triggers the kill, seconds to wait then)
WATCHED = {
    "example_gen": ("Cifar10ExampleGen", 0.5),
    "transform": ("Transform", 3.0),
    "linear_probe": (names.PROBE_TRAINER, 2.0),
    "evaluator": ("Evaluator", 2.0),
}
MAE_EPOCHS = 4
TRAIN, TEST = 2560, 500
# The MAE epochs a point needs: mae_epoch kills during the third epoch,
# mae_checkpoint_write tears the second epoch's checkpoint.
MIN_MAE_EPOCHS = {"mae_epoch": 3, "mae_checkpoint_write": 2}


def small_cifar(data: str, root: str, train_count: int = TRAIN, test_count: int = TEST) -> str:
  """The first `train_count` / `test_count` images of CIFAR-10, in its own format."""
  from models import cifar10
  from pipeline import data_source

  source = data_source.resolve_cifar10(data, names.DATA_CACHE_DIR)
  train = cifar10.read_batch_file(os.path.join(source, "data_batch_1"))
  test = cifar10.read_batch_file(os.path.join(source, "test_batch"))
  return cifar10.write_cifar_dir(
      os.path.join(root, "cifar-10-batches-py"),
      (train[0][:train_count], train[1][:train_count]),
      (test[0][:test_count], test[1][:test_count]),
      cifar10.read_class_names(os.path.join(source, "batches.meta")),
  )


def runner_args(data_root: str, output_dir: str, mae_epochs: int = MAE_EPOCHS) -> List[str]:
  """`local_runner`'s arguments: profile `smoke` on `data_root` into
  `output_dir`, with `mae_epochs` MAE epochs."""
  return [
      "--profile",
      "smoke",
      "--data",
      data_root,
      "--output-dir",
      output_dir,
      "--overrides",
      f'{{"pretrain": {{"epochs": {mae_epochs}}}}}',
  ]


# ---- the child: the runner, with a fault injected at an exact instant -------------
def child(fault: Optional[str], args: List[str]) -> None:
  """Runs `local_runner` with `args` in this process, patched to SIGKILL
  itself at `fault` (`mae_checkpoint_write`, `pusher_copy`; None: no fault)."""
  if fault == "mae_checkpoint_write":
    from models import checkpoints

    save = checkpoints.EpochCheckpoint.on_epoch_end

    def torn_save(self, epoch, logs=None):
      save(self, epoch, logs)
      if epoch + 1 == 2:  # the second epoch's checkpoint, torn mid-write
        data = self.manager.latest_checkpoint + ".data-00000-of-00001"
        with open(data, "r+b") as f:
          f.truncate(os.path.getsize(data) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.EpochCheckpoint.on_epoch_end = torn_save
  elif fault == "pusher_copy":
    from components import versioned_pusher

    copy = versioned_pusher.io_utils.copy_dir

    def copy_then_die(src, dst, *a, **k):
      copy(src, dst, *a, **k)
      os.kill(os.getpid(), signal.SIGKILL)

    versioned_pusher.io_utils.copy_dir = copy_then_die
  from pipeline import local_runner

  local_runner.main(args)


# ---- the driver ----------------------------------------------------------------------
def _start(args: List[str], fault: Optional[str], log_path: str) -> subprocess.Popen:
  command = [
      sys.executable,
      "-m",
      "benchmarks.kill_matrix",
      "--child",
      fault or "none",
      "--",
      *args,
  ]
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  return subprocess.Popen(
      command, cwd=names.PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
  )


def _node_running(metadata_path: str, node: str) -> bool:
  from pipeline import runs

  if not os.path.exists(metadata_path):
    return False
  try:
    return any(
        r["node"] == node and r["state"] == "RUNNING"
        for r in runs.last_run_executions(metadata_path)
    )
  except Exception:  # pylint: disable=broad-except  (the runner is writing)
    return False


def _log(path: str) -> str:
  with open(path, errors="replace") as f:
    return f.read()


def kill_at(
    point: str, args: List[str], metadata_path: str, log_path: str, timeout: float = 900
) -> str:
  """Runs the child until `point`, kills its process group; returns how."""
  fault = point if point in ("mae_checkpoint_write", "pusher_copy") else None
  process = _start(args, fault, log_path)
  deadline = time.monotonic() + timeout
  while process.poll() is None and time.monotonic() < deadline:
    if point in WATCHED:
      node, delay = WATCHED[point]
      if _node_running(metadata_path, node):
        time.sleep(delay)
        break
    elif point == "mae_epoch" and re.search(rf"\[{names.MAE_TRAINER}\] epoch 2/", _log(log_path)):
      time.sleep(1.0)  # into epoch 3
      break
    time.sleep(0.1)
  if process.poll() is None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return "SIGKILL from outside"
  return (
      "killed itself (fault injected)"
      if process.returncode == -9
      else f"ended by itself with {process.returncode} before the point"
  )


def outcome(output_dir: str, log_text: str) -> Dict:
  """What a re-run left: the pushed versions and staging folders, the epoch
  the MAE resumed from and the checkpoints it skipped as unreadable (from
  `log_text`), and each run's node states in MLMD."""
  from pipeline import runs

  metadata = names.metadata_path(output_dir)
  base = names.serving_model_dir(output_dir)
  entries = sorted(os.listdir(base)) if os.path.isdir(base) else []
  resumed = re.findall(r"Resuming from \S+ \(epoch (\d+)\)", log_text)
  unreadable = re.findall(r"checkpoint (\S+) is unreadable", log_text)
  states = {}
  for run in runs.list_runs(metadata):
    rows = runs.last_run_executions(metadata, run["pipeline"], run["run_id"])
    states[run["run_id"]] = {r["node"]: r["state"] for r in rows}
  return dict(
      versions=names.pushed_versions(entries),
      staging=[e for e in entries if e.startswith(".staging-")],
      resumed_from_epoch=int(resumed[-1]) if resumed else None,
      unreadable=unreadable,
      states=states,
  )


def mae_weights(output_dir: str) -> Dict[str, np.ndarray]:
  """The MAE's final weights in a run's output folder, by checkpoint key
  (the model's variables, not the optimizer's)."""
  import tensorflow as tf
  from pipeline.run_outputs import RunOutputs
  from tfx.utils import path_utils

  run = RunOutputs.load(output_dir)
  prefix = os.path.join(
      path_utils.serving_model_path(run.uri(names.MAE_TRAINER, "Model")), names.MAE_WEIGHTS_PREFIX
  )
  reader = tf.train.load_checkpoint(prefix)
  return {
      k: reader.get_tensor(k)
      for k in reader.get_variable_to_shape_map()
      if k.startswith("model/") and "OPTIMIZER" not in k
  }


def run_matrix(
    data: str,
    points: List[str],
    work: str,
    train_count: int = TRAIN,
    test_count: int = TEST,
    mae_epochs: int = MAE_EPOCHS,
    reference_dir: Optional[str] = None,
) -> List[Dict]:
  """One row per kill point (`format_row`). `reference_dir`: the output folder
  of an uninterrupted run of the same command (same images and epochs) whose
  MAE the re-runs' are compared with; None: runs one in `work` first."""
  data_root = small_cifar(data, work, train_count, test_count)
  if reference_dir is None:
    reference_dir = os.path.join(work, "reference")
    start = time.monotonic()
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.local_runner",
            *runner_args(data_root, reference_dir, mae_epochs),
        ],
        cwd=names.PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    if ref.returncode:
      raise RuntimeError(
          "the uninterrupted run failed:\n" + ref.stdout[-3000:] + ref.stderr[-3000:]
      )
    print(f"uninterrupted run: {time.monotonic() - start:.0f} s", flush=True)
  reference = mae_weights(reference_dir)
  rows = []
  for point in points:
    output_dir = os.path.join(work, point)
    args = runner_args(data_root, output_dir, mae_epochs)
    how = kill_at(point, args, names.metadata_path(output_dir), os.path.join(work, f"{point}.log"))
    start = time.monotonic()
    rerun = subprocess.run(
        [sys.executable, "-m", "pipeline.local_runner", *args],
        cwd=names.PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    row = dict(
        point=point,
        kill=how,
        rerun_status=rerun.returncode,
        rerun_seconds=seconds,
        **outcome(output_dir, rerun.stdout + rerun.stderr),
    )
    if rerun.returncode == 0:
      weights = mae_weights(output_dir)
      row["max_weight_difference"] = max(
          float(np.abs(weights[k] - reference[k]).max()) for k in reference
      )
    else:
      row["error"] = (rerun.stdout + rerun.stderr)[-2000:]
    rows.append(row)
    print(format_row(row), flush=True)
  return rows


def format_row(row: Dict) -> str:
  """One `run_matrix` row as a line of the HEADER's Markdown table."""
  runs = list(row["states"].values())
  killed = {n: s for n, s in runs[0].items() if s not in ("COMPLETE", "CACHED")} if runs else {}
  return (
      f"| {row['point']} | {row['kill']} | exit {row['rerun_status']} in "
      f"{row['rerun_seconds']:.0f} s | "
      + (f"epoch {row['resumed_from_epoch']}" if row["resumed_from_epoch"] is not None else "-")
      + (
          " (skipped unreadable " + ", ".join(os.path.basename(u) for u in row["unreadable"]) + ")"
          if row["unreadable"]
          else ""
      )
      + f" | {len(row['versions'])} | {len(row['staging'])} | "
      + (", ".join(f"{n} {s}" for n, s in killed.items()) or "none")
      + f" | {len(runs)} runs, last all complete: "
      + str(all(s in ("COMPLETE", "CACHED") for s in runs[-1].values()) if runs else "-")
      + f" | {row.get('max_weight_difference', float('nan')):.2g} |"
  )


HEADER = (
    "| kill point | how | re-run | MAE resumed from | versions pushed | staging left | "
    "killed run in MLMD | runs | max MAE weight difference vs uninterrupted |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main(argv=None):
  """Kills the pipeline at each `--points` point, re-runs it and prints
  the table of what each re-run did; returns the rows. With `--child`: the
  runner itself, as `kill_at` starts it."""
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--child"]:
    fault = None if argv[1] == "none" else argv[1]
    return child(fault, argv[3:])
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--data", required=True, help="CIFAR-10 (the first images are used)")
  p.add_argument("--points", default=",".join(POINTS), help=f"some of {','.join(POINTS)}")
  p.add_argument("--work-dir", default=None, help="default: a temporary folder")
  p.add_argument(
      "--train", type=int, default=TRAIN, help="the first N CIFAR-10 train images are the data"
  )
  p.add_argument(
      "--test", type=int, default=TEST, help="the first N CIFAR-10 test images are the test split"
  )
  p.add_argument(
      "--mae-epochs",
      type=int,
      default=MAE_EPOCHS,
      help="MAE pretraining epochs (mae_epoch needs 3, mae_checkpoint_write 2)",
  )
  p.add_argument(
      "--reference-dir",
      default=None,
      help="output folder of an uninterrupted run of the same command "
      "(same --data, --train, --test and --mae-epochs): its MAE is "
      "the reference instead of a run made first",
  )
  args = p.parse_args(argv)
  points = [x for x in args.points.split(",") if x]
  unknown = sorted(set(points) - set(POINTS))
  if unknown:
    raise SystemExit(f"unknown kill points {unknown}; known: {', '.join(POINTS)}")
  short = [x for x in points if args.mae_epochs < MIN_MAE_EPOCHS.get(x, 1)]
  if short:
    raise SystemExit(
        f"--mae-epochs {args.mae_epochs} is too few for "
        + ", ".join(f"{x} (at least {MIN_MAE_EPOCHS[x]})" for x in short)
    )
  with tempfile.TemporaryDirectory() as tmp:
    work = args.work_dir or tmp
    os.makedirs(work, exist_ok=True)
    print(HEADER, flush=True)
    rows = run_matrix(
        args.data, points, work, args.train, args.test, args.mae_epochs, args.reference_dir
    )
  print("\n" + HEADER + "\n" + "\n".join(format_row(r) for r in rows))
  return rows


if __name__ == "__main__":
  main()
