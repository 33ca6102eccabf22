"""The bound the CPU puts on img/s: matmul FLOPs per image (counted from the
model config) against this machine's measured matmul speed.

  python -m benchmarks.roofline [--profile cpu] [--model reference] \
      [--precision float32,mixed_bfloat16]

Element-wise work (GELU, LayerNorm, softmax, AdamW) is not counted, so real
throughput stays below the bound; how far below says how much is left to win
by anything but a cheaper model or a faster CPU. On its own it prints, per
precision, the bound on MAE training steps and on embedding images (the
serving signatures' encoder); benchmarks/train_throughput.py and
benchmarks/serving.py (--roofline) print each result's share of it.
"""

import argparse
import concurrent.futures as concurrent_futures
import json
import time
from typing import Any, Dict, Tuple

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
from models import config as config_lib


def _blocks(m: config_lib.ModelConfig, depth: int, dim: int, tokens: int) -> float:
  """Multiply-adds of `depth` transformer blocks over `tokens` tokens:
  q, k, v and proj 4 dim^2, MLP 2 mlp_ratio dim^2, QK^T and AV 2 tokens dim."""
  return depth * tokens * ((4 + 2 * m.mlp_ratio) * dim * dim + 2 * tokens * dim)


def _patch_dim(m: config_lib.ModelConfig) -> int:
  return m.patch_size**2 * config_lib.IMAGE_CHANNELS


def embedding_flops(m: config_lib.ModelConfig) -> float:
  """FLOPs (2 per multiply-add) of one image's embedding: the encoder on all
  the patches, as the serving signatures run it."""
  n = m.num_patches
  return 2.0 * (
      n * _patch_dim(m) * m.embed_dim + _blocks(m, m.depth, m.embed_dim, m.num_prefix_tokens + n)
  )


def mae_train_flops(
    m: config_lib.ModelConfig, local_views: int = 0, local_view_size: int = 16
) -> float:
  """FLOPs of one image's MAE training step: the forward pass (encoder on the
  visible patches, decoder on all) and a backward pass of twice its matmuls,
  for each of the image's views (two with a contrastive term; its projector
  and a momentum teacher are not counted), plus the encoder on every patch
  of each of `local_views` local views of side `local_view_size`."""
  n = m.num_patches
  visible = int(n * (1 - m.mask_ratio))
  prefix = m.num_prefix_tokens  # [CLS], if any
  macs = (
      visible * _patch_dim(m) * m.embed_dim  # patch embedding
      + _blocks(m, m.depth, m.embed_dim, prefix + visible)
      + (prefix + visible) * m.embed_dim * m.decoder_embed_dim  # decoder embedding
      + _blocks(m, m.decoder_depth, m.decoder_embed_dim, prefix + n)
      + n * m.decoder_embed_dim * _patch_dim(m)
  )  # per-token pixel head
  views = 2 if m.contrastive_weight else 1
  tokens = (local_view_size // m.patch_size) ** 2
  local = tokens * _patch_dim(m) * m.embed_dim + _blocks(m, m.depth, m.embed_dim, prefix + tokens)
  return 3 * 2.0 * (macs * views + local * local_views)


def matmul_flops_per_second(
    policy: str = "float32", size: int = 2048, repeats: int = 20, concurrent: int = 1
) -> float:
  """Measured speed of a large square matmul in the policy's compute dtype,
  `concurrent` of them at once from as many threads (for a process whose
  calls each run on one intra-op thread, one call per core)."""
  import tensorflow as tf

  dtype = tf.keras.mixed_precision.Policy(policy).compute_dtype
  a = tf.cast(tf.random.normal([size, size]), dtype)
  matmul = tf.function(lambda x: tf.matmul(x, x))
  matmul(a).numpy()  # trace, warm up

  def loop(_):
    for _ in range(repeats):
      out = matmul(a)
    out.numpy()

  start = time.perf_counter()
  with concurrent_futures.ThreadPoolExecutor(concurrent) as pool:
    list(pool.map(loop, range(concurrent)))
  return 2 * size**3 * repeats * concurrent / (time.perf_counter() - start)


def img_per_second_bound(
    policy: str, flops_per_image: float, size: int = 2048, repeats: int = 20, concurrent: int = 1
) -> Tuple[float, str]:
  """(bound in img/s, a line saying how it was found) for this machine."""
  peak = matmul_flops_per_second(policy, size, repeats, concurrent)
  bound = peak / flops_per_image
  at_once = f" ({concurrent} at once, one per thread)" if concurrent > 1 else ""
  return bound, (
      f"{policy}: {size}x{size} matmul{at_once} at {peak / 1e9:.0f} GFLOP/s, "
      f"{flops_per_image / 1e6:.0f} MFLOP per image in matmuls: "
      f"at most {bound:.0f} img/s"
  )


def add_model_arguments(parser: argparse.ArgumentParser, default: str) -> None:
  """The benchmarks' choice of MAE: --profile, --model and --model-overrides."""
  parser.add_argument("--profile", default="cpu")
  parser.add_argument(
      "--model",
      choices=["reference", "profile"],
      default=default,
      help="reference: config.REFERENCE_MODEL (6x128 encoder, the "
      "throughput targets' size); profile: the profile's model",
  )
  parser.add_argument(
      "--model-overrides",
      default="{}",
      help="JSON ModelConfig fields over the chosen model, e.g. "
      "'{\"uniformity_weight\": 0.001}'",
  )


def model_overrides(args: argparse.Namespace) -> Dict[str, Any]:
  """The "model" section of the profile overrides `add_model_arguments` chose."""
  model = {} if args.model == "profile" else dict(config_lib.REFERENCE_MODEL)
  model.update(json.loads(args.model_overrides))
  return model


def main(argv=None):
  """Prints the model's matmul MFLOP per image and, per `--precision`, the
  measured matmul speed and the img/s it bounds MAE training steps and
  embedding to; returns those bounds, {policy: {what: img/s}}."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  add_model_arguments(p, default="profile")
  p.add_argument(
      "--precision",
      default="float32",
      help="comma-separated Keras policies whose matmul speed to measure",
  )
  p.add_argument(
      "--matmul-size",
      type=int,
      default=2048,
      help="side of the square matmul timed (smaller: quicker, but further from the peak)",
  )
  p.add_argument("--repeats", type=int, default=20, help="matmuls timed per precision")
  args = p.parse_args(argv)
  m = config_lib.get_profile(args.profile, {"model": model_overrides(args)}).model
  flops = {"MAE training step": mae_train_flops(m), "embedding": embedding_flops(m)}
  print(
      f"model: encoder {m.depth}x{m.embed_dim}, decoder {m.decoder_depth}x"
      f"{m.decoder_embed_dim}, patch {m.patch_size}, image {m.image_size}, mask "
      f"{m.mask_ratio}: "
      + ", ".join(f"{what} {f / 1e6:.1f} MFLOP per image" for what, f in flops.items())
  )
  bounds = {}
  for policy in args.precision.split(","):
    peak = matmul_flops_per_second(policy, args.matmul_size, args.repeats)
    bounds[policy] = {what: peak / f for what, f in flops.items()}
    print(
        f"{policy}: {args.matmul_size}x{args.matmul_size} matmul at "
        f"{peak / 1e9:.0f} GFLOP/s: at most "
        + ", ".join(f"{b:.0f} img/s ({what})" for what, b in bounds[policy].items()),
        flush=True,
    )
  return bounds


if __name__ == "__main__":
  main()
