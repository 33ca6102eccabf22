"""Images/second of the MAE training step, input pipeline included.

  python -m benchmarks.train_throughput --data ../shared/data/cifar10 \
      --precision float32,mixed_bfloat16 --jit on,off
  python -m benchmarks.train_throughput --model profile     # the cpu profile's MAE

The model is the reference size of the throughput targets
(`config.REFERENCE_MODEL`: encoder 6x128) unless --model profile, which takes
the profile's own (4x160 for `cpu`); everything else is the profile's, the
image size (data.image_size, which every model follows) included.

Uses the pipeline's own model, optimizer and input pipeline
(`models.engine_pretrain.pretrain`) on real CIFAR-10 train images; the first
epoch (tracing, XLA compilation, warm-up) is not counted. Several precisions
run one after the other in one process, so their ratio is measured under the
same machine load.

With --roofline it first prints the bound the CPU puts on the step: the
matmul FLOPs of one image's training step (counted from the model config)
against this machine's measured matmul speed (a large square matmul per
precision), and each result's share of that bound.
"""

import argparse
import json
import os
import tempfile

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np

from benchmarks import roofline
from models import config as config_lib
from models import names
from models.cifar10 import read_split
from models.engine_pretrain import pretrain
from models.precision import resolve_precision
from pipeline import data_source


def standardised_train_images(data_root: str, limit: int) -> np.ndarray:
  """The first `limit` CIFAR-10 train images, float32, standardised per
  channel by their own mean and standard deviation."""
  images = read_split(data_root, "train")[0][:limit].astype(np.float32) / 255.0
  return (images - images.mean((0, 1, 2))) / images.std((0, 1, 2))


def main(argv=None):
  """Pretrains per precision and XLA setting and prints the img/s of the
  epochs after the first (with `--roofline`, as a share of the matmul bound)."""
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--data", default=os.environ.get(names.CIFAR10_ENV))
  roofline.add_model_arguments(p, default="reference")
  p.add_argument(
      "--precision",
      default="float32,mixed_bfloat16",
      help="comma-separated Keras policies, or auto (what the "
      "cpu profile picks on this machine)",
  )
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
  p.add_argument("--epochs", type=int, default=3, help="first one is warm-up")
  p.add_argument(
      "--jit",
      default=None,
      help="XLA for the whole train step: on, off or on,off; default: the profile's setting",
  )
  p.add_argument(
      "--xla-splits",
      default=None,
      help="comma-separated runtime.xla_splits values, e.g. 1,2; default: the profile's setting",
  )
  p.add_argument(
      "--pretrain-overrides",
      default="{}",
      help="JSON PretrainConfig fields, e.g. '{\"hue_jitter\": 0.1}' (the "
      "augmentation runs in the measured input pipeline)",
  )
  p.add_argument(
      "--roofline",
      action="store_true",
      help="also print the matmul-FLOP bound on img/s for this CPU",
  )
  args = p.parse_args(argv)

  root = data_source.resolve_cifar10(args.data, names.DATA_CACHE_DIR)
  images = standardised_train_images(root, 50000)
  model = roofline.model_overrides(args)
  pretrain_overrides = json.loads(args.pretrain_overrides)
  profile = config_lib.get_profile(args.profile, {"model": model, "pretrain": pretrain_overrides})
  jits = (
      [profile.runtime.jit_compile]
      if args.jit is None
      else [_on_off(v) for v in args.jit.split(",")]
  )
  splits = (
      [profile.runtime.xla_splits]
      if args.xla_splits is None
      else [int(v) for v in args.xla_splits.split(",")]
  )
  m = profile.model
  print(
      f"model: encoder {m.depth}x{m.embed_dim} ({m.num_heads} heads), decoder "
      f"{m.decoder_depth}x{m.decoder_embed_dim}, patch {m.patch_size}, mask "
      f"{m.mask_ratio}, batch {args.batch_size}, TF_CPU_ALLOCATOR_USE_BFC="
      f"{os.environ.get('TF_CPU_ALLOCATOR_USE_BFC')}"
  )
  results = []
  bounds = {}
  if args.roofline:
    for policy in sorted(
        {resolve_precision(pr, profile.runtime.strategy) for pr in args.precision.split(",")}
    ):
      bounds[policy], line = roofline.img_per_second_bound(
          policy,
          roofline.mae_train_flops(
              m, profile.pretrain.local_views, profile.pretrain.local_view_size
          ),
      )
      print(line, flush=True)
  for precision in args.precision.split(","):
    for jit, n in [(j, n) for j in jits for n in (splits if j else [1])]:
      cfg = config_lib.get_profile(
          args.profile,
          {
              "model": model,
              "pretrain": {
                  **pretrain_overrides,
                  "epochs": args.epochs,
                  "steps_per_epoch": args.steps,
                  "batch_size": args.batch_size,
              },
              "runtime": {"precision": precision, "jit_compile": jit, "xla_splits": n},
          },
      )
      with tempfile.TemporaryDirectory() as tmp:
        _, history = pretrain(cfg, images, tmp, os.path.join(tmp, "ckpt"))
      timed = history[1:]
      ips = sum(h["images_per_second"] for h in timed) / len(timed)
      policy = resolve_precision(precision, cfg.runtime.strategy)
      label = policy if policy == precision else f"{precision}={policy}"
      results.append(
          f"{label:16s} XLA {f'on, {n} split(s)' if jit else 'off':14s} "
          f"{ips:6.0f} img/s"
          f"  ({50000 / ips:.1f} s per 50,000-image epoch)"
          + (f", {ips / bounds[policy]:.0%} of the matmul bound" if policy in bounds else "")
      )
      print(results[-1], flush=True)
  print("\n".join(["summary:"] + results))


def _on_off(value: str) -> bool:
  if value not in ("on", "off"):
    raise ValueError(f"--jit takes on, off or on,off; got {value!r}")
  return value == "on"


if __name__ == "__main__":
  main()
