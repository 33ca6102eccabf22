"""Where and how a run executes: the Keras it needs, the distribution
strategy (one device, mirrored, multi-worker, TPU), which process writes the
outputs, and whether the train step is compiled with XLA."""

import logging
from typing import Optional

import tensorflow as tf
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.core import config_lib as autograph_rules


def require_keras2() -> None:
  """The models are Keras 2 (tf_keras), what TFX 1.16 uses. TensorFlow binds
  tf.keras when first imported, so a program that imports it before setting
  TF_USE_LEGACY_KERAS=1 gets Keras 3 and fails later in obscure ways."""
  if not tf.keras.__name__.startswith("tf_keras"):
    raise RuntimeError(
        f"tf.keras is {tf.keras.__name__}, not tf_keras (Keras 2): set "
        "TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported (importing "
        "the `models`, `pipeline` or `components` package first does it)"
    )


KERAS2_MODULE = "tf_keras"


def leave_keras_internals_unconverted() -> None:
  """Autograph leaves tf_keras's own code alone, as it does `keras`'s.

  TensorFlow's autograph rules list `keras` among the libraries whose code is
  written for graph mode and so never transpiled, but not `tf_keras`, the
  same Keras 2 code under its new name. Without the rule every trace of a
  Keras train or predict function transpiles Keras's internals (Layer.__call__,
  the optimizer, the training loop), which costs each Trainer about as long as
  a small model's whole training. Layers' `call` and the function handed to
  `tf.function` are still converted, as Keras asks for them explicitly.
  """
  rules = autograph_config.CONVERSION_RULES
  if not any(
      isinstance(rule, autograph_rules.DoNotConvert) and rule.matches(KERAS2_MODULE)
      for rule in rules
  ):
    autograph_config.CONVERSION_RULES = (autograph_rules.DoNotConvert(KERAS2_MODULE), *rules)


leave_keras_internals_unconverted()

_multi_worker_strategy: Optional[tf.distribute.Strategy] = None


def make_strategy(name: str) -> tf.distribute.Strategy:
  """`default` (one device), `mirrored` (all local GPUs/CPUs),
  `multi_worker` (TF_CONFIG cluster) or `tpu`."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    # All local GPUs; without any, all logical CPU devices (one per replica).
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == "multi_worker":
    # One per process: it joins the cluster (TF_CONFIG) once, at creation.
    global _multi_worker_strategy  # pylint: disable=global-statement
    if _multi_worker_strategy is None:
      _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return _multi_worker_strategy
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(
      f"Unknown distribution strategy {name!r}; expected one of "
      "default, mirrored, multi_worker, tpu"
  )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's outputs: always, except on the
  non-chief workers of a multi-worker run (which train in step with the
  chief, and whose copies of the outputs would collide with its)."""
  return bool(strategy.extended.should_checkpoint)


def use_xla(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
  """XLA for the train step, unless replicas are CPU devices: XLA:CPU cannot
  reach a variable mirrored on another logical CPU device (XLA known issue
  "tf.Variable on a different device")."""
  if (
      jit_compile
      and strategy.num_replicas_in_sync > 1
      and all("CPU" in d.upper() for d in strategy.extended.worker_devices)
  ):
    logging.warning(
        "jit_compile ignored: %d replicas on CPU devices", strategy.num_replicas_in_sync
    )
    return False
  return jit_compile
