"""The MAE train step under MirroredStrategy on 2 logical CPU devices equals
one device on the same global batch (loss and weights after one AdamW step).

Logical devices must be configured before TensorFlow initialises, so the
check runs in a fresh interpreter.
"""

import json
import subprocess
import sys

from models import names

SCRIPT = r"""
import json
import models  # TensorFlow's environment, before TensorFlow loads
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from models import config as config_lib, training
from models.engine_pretrain import compile_mae

GLOBAL_BATCH = 8
rng = np.random.default_rng(0)
images = rng.normal(size=(GLOBAL_BATCH, 32, 32, 3)).astype(np.float32)
results = {}
for name in ("default", "mirrored"):
  strategy = training.make_strategy(name)
  replicas = strategy.num_replicas_in_sync
  # batch_size is per replica: the same global batch, hence the same lr.
  cfg = config_lib.get_profile("smoke", {
      "pretrain": {"batch_size": GLOBAL_BATCH // replicas, "warmup_epochs": 0.0},
      "runtime": {"strategy": name, "jit_compile": True}})
  noise = rng.uniform(size=(GLOBAL_BATCH, cfg.model.num_patches)).astype(np.float32) \
      if name == "default" else results["default"]["noise"]
  with training.precision_policy(cfg.runtime.precision), strategy.scope():
    tf.keras.utils.set_random_seed(0)           # same initial weights
    model = compile_mae(cfg, strategy, steps_per_epoch=1)
  data = tf.data.Dataset.from_tensor_slices((images, noise)).batch(GLOBAL_BATCH)
  history = model.fit(data, epochs=1, verbose=0)
  results[name] = dict(replicas=replicas, loss=history.history["loss"][0], noise=noise,
                       jit=bool(model._jit_compile),
                       weights=[v.numpy() for v in model.trainable_variables],
                       # Adam's moments hold the gradient itself (the weights'
                       # first update is sign-like, blind to gradient scale).
                       slots=[v.numpy() for v in model.optimizer.variables])
d, m = results["default"], results["mirrored"]
print(json.dumps(dict(
    replicas=[d["replicas"], m["replicas"]], loss=[d["loss"], m["loss"]],
    jit=[d["jit"], m["jit"]],
    max_weight_diff=max(float(np.abs(a - b).max()) for a, b in zip(d["weights"], m["weights"])),
    max_slot_rel_diff=max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
                          for a, b in zip(d["slots"], m["slots"])))))
"""


def test_mirrored_on_two_cpus_matches_one_device():
  run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=names.PROJECT_DIR,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-4000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["replicas"] == [1, 2]
  assert result["jit"] == [True, False]        # XLA:CPU cannot span logical CPUs
  loss_one, loss_two = result["loss"]
  assert abs(loss_one - loss_two) <= 1e-5 * abs(loss_one), result
  assert result["max_weight_diff"] < 1e-6, result
  assert result["max_slot_rel_diff"] < 1e-4, result
