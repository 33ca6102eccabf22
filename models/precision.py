"""Numeric precision: what runtime.precision "auto" resolves to on this
machine, and the Keras mixed-precision policy for a block of code."""

import contextlib
import dataclasses

import tensorflow as tf

from models import config as config_lib


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether the CPU computes bfloat16 itself (AVX512-BF16 or AMX-BF16: Intel
  Cooper Lake and Sapphire Rapids on, AMD Zen 4 on). Elsewhere oneDNN emulates
  bf16 through float32, no faster. False where /proc/cpuinfo does not exist."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("flags"):
          return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
  except OSError:
    pass
  return False


def resolve_precision(precision: str, strategy: str, cpuinfo: str = "/proc/cpuinfo") -> str:
  """The Keras policy for runtime.precision: explicit names as they are;
  "auto" is mixed_bfloat16 on TPU, mixed_float16 on GPU (bf16 needs Ampere or
  newer, fp16 runs on every CUDA GPU), and on CPU mixed_bfloat16 only with
  native bf16, else float32."""
  if precision != "auto":
    return precision
  if strategy == "tpu":
    return "mixed_bfloat16"
  if tf.config.list_physical_devices("GPU"):
    return "mixed_float16"
  return "mixed_bfloat16" if cpu_has_native_bfloat16(cpuinfo) else "float32"


def with_resolved_precision(cfg: config_lib.RunConfig) -> config_lib.RunConfig:
  """`cfg` with runtime.precision "auto" replaced by the policy it resolves to
  here, so logs, summaries and checkpoint keys name what actually ran."""
  rt = cfg.runtime
  return dataclasses.replace(
      cfg, runtime=dataclasses.replace(rt, precision=resolve_precision(rt.precision, rt.strategy))
  )


@contextlib.contextmanager
def precision_policy(name: str):
  """Sets the global Keras mixed-precision policy inside the block only."""
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)
