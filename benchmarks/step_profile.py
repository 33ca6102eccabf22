"""Where one MAE training step's time goes, per precision: the TF profiler
over a few steps, XLA's instructions grouped by kind.

  python -m benchmarks.step_profile --data ../shared/data/cifar10 \
      --precision float32,mixed_bfloat16 [--model profile]

Runs the pipeline's own step (`models.engine_pretrain.pretrain`, the
profile's XLA splits) on real CIFAR-10 train images, traces `--steps` steps
after `--warmup` untraced ones, and prints per step:
- the wall time and img/s of the traced steps;
- thread time by kind: matmuls (oneDNN's, as XLA custom-calls, and XLA's
  own dots), element-wise
  loop fusions (XLA `call`/`fusion`: GELU, LayerNorm, softmax, residuals,
  casts, AdamW), reductions XLA:CPU runs as windows (`reduce-window`), other
  XLA instructions, and the input pipeline's ops (augmentation);
- the speed of the matmuls themselves: the step's matmul FLOPs
  (`benchmarks/roofline.py`) over their thread time, per core, beside a
  large square matmul's per core: how far the small matmuls of this model
  are from the bound before any element-wise work is counted.

XLA names its instructions in the trace with
`--xla_cpu_enable_xprof_traceme`, which this script adds to XLA_FLAGS.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Dict  # noqa: E402

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
from benchmarks import roofline  # noqa: E402
from benchmarks.train_throughput import standardised_train_images  # noqa: E402
from models import config as config_lib  # noqa: E402
from models import names  # noqa: E402
from models.precision import resolve_precision  # noqa: E402
from pipeline import data_source  # noqa: E402

MATMUL, ELEMENTWISE, REDUCE_WINDOW, OTHER_XLA, INPUT, OUTSIDE_XLA = (
    "matmuls (oneDNN custom-calls, XLA dots)",
    "element-wise loop fusions",
    "windowed reductions (reduce-window)",
    "other XLA instructions",
    "input pipeline ops",
    "TF ops outside XLA (gradient sums, masks)",
)


def xla_kind(instruction: str) -> str:
  """The kind of an XLA:CPU instruction from its name (`custom-call.12`)."""
  op = re.sub(r"\.\d+$", "", instruction)
  if op in ("custom-call", "dot"):  # XLA:CPU's oneDNN matmuls, its own
    return MATMUL
  if op in ("call", "fusion"):
    return ELEMENTWISE
  if op == "reduce-window":
    return REDUCE_WINDOW
  return OTHER_XLA


def thread_time_by_kind(trace_dir: str) -> Dict[str, float]:
  """Seconds of thread time per kind in the newest trace under trace_dir."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2

  path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  seconds: Dict[str, float] = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if line.name.startswith("host_executor"):  # XLA's instructions
          kind = xla_kind(name)
        elif name.startswith(("ExecutorState", "ExecutorDone", "ParallelFor")):
          continue  # containers of the ops below
        elif line.name.startswith("tf_data_private_threadpool"):
          kind = INPUT
        elif line.name.startswith("tf_Compute") and ":" in name:
          kind = OUTSIDE_XLA  # "<node>:<OpType>"
        else:
          continue
        seconds[kind] += event.duration_ps * 1e-12
  return dict(seconds)


def profile_step(cfg: config_lib.RunConfig, images, warmup: int, steps: int, trace_dir: str):
  """(seconds per traced step, {kind: thread seconds per step})."""
  import tensorflow as tf
  from models.engine_pretrain import pretrain

  class Trace(tf.keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.batches, self.wall = 0, None

    def on_train_batch_begin(self, batch, logs=None):
      if self.batches == warmup:
        tf.profiler.experimental.start(trace_dir)
        self.wall = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
      self.batches += 1
      if self.batches == warmup + steps:
        self.wall = time.perf_counter() - self.wall  # the ops are synchronous here
        tf.profiler.experimental.stop()

  trace = Trace()
  with tempfile.TemporaryDirectory() as tmp:
    pretrain(cfg, images, tmp, os.path.join(tmp, "ckpt"), callbacks=[trace])
  by_kind = {k: v / steps for k, v in thread_time_by_kind(trace_dir).items()}
  return trace.wall / steps, by_kind


def main(argv=None):
  """Profiles `--steps` MAE training steps per `--precision` and prints the
  ms per step, img/s, share of the matmul bound, thread time by kind and
  the matmuls' own speed against a large matmul's."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--data", default=os.environ.get(names.CIFAR10_ENV))
  roofline.add_model_arguments(p, default="reference")
  p.add_argument("--precision", default="float32,mixed_bfloat16")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--warmup", type=int, default=15, help="untraced steps first")
  p.add_argument("--steps", type=int, default=10, help="traced steps")
  p.add_argument("--trace-dir", default=None, help="keep the traces here (TensorBoard)")
  args = p.parse_args(argv)

  root = data_source.resolve_cifar10(args.data, names.DATA_CACHE_DIR)
  images = standardised_train_images(root, args.batch_size * (args.warmup + args.steps))
  model = roofline.model_overrides(args)
  m = config_lib.get_profile(args.profile, {"model": model}).model
  flops = roofline.mae_train_flops(m) * args.batch_size
  print(
      f"model: encoder {m.depth}x{m.embed_dim}, decoder {m.decoder_depth}x"
      f"{m.decoder_embed_dim}, mask {m.mask_ratio}, batch {args.batch_size}: "
      f"{flops / 1e9:.1f} GFLOP of matmuls per step",
      flush=True,
  )
  trace_root = args.trace_dir or tempfile.mkdtemp(prefix="step_profile-")
  cores = os.cpu_count()
  for precision in args.precision.split(","):
    cfg = config_lib.get_profile(
        args.profile,
        {
            "model": model,
            "pretrain": {
                "epochs": 1,
                "steps_per_epoch": args.warmup + args.steps,
                "batch_size": args.batch_size,
            },
            "runtime": {"precision": precision},
        },
    )
    policy = resolve_precision(precision, cfg.runtime.strategy)
    peak = roofline.matmul_flops_per_second(policy)
    wall, by_kind = profile_step(
        cfg, images, args.warmup, args.steps, os.path.join(trace_root, policy)
    )
    busy = sum(by_kind.values())
    print(
        f"\n{policy}: {wall * 1e3:.0f} ms per step, {args.batch_size / wall:.0f} img/s, "
        f"{flops / wall / peak:.0%} of the matmul bound ({peak / 1e9:.0f} GFLOP/s on a "
        f"2048x2048 matmul); {busy / wall:.2f} of {cores} cores busy",
        flush=True,
    )
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
      print(f"  {seconds * 1e3:7.1f} ms  {seconds / busy:4.0%}  {kind}")
    if by_kind.get(MATMUL):
      per_core = flops / by_kind[MATMUL]
      print(
          f"  the matmuls alone: {per_core / 1e9:.0f} GFLOP/s per core busy in them, "
          f"{per_core / (peak / cores):.0%} of the 2048x2048 matmul's per core"
      )
  print(f"\ntraces (TensorBoard's profile plugin reads them): {trace_root}")


if __name__ == "__main__":
  main()
