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

from models import config as config_lib, precision, runtime
from models.engine_pretrain import compile_mae

GLOBAL_BATCH = 8
rng = np.random.default_rng(0)
images = rng.normal(size=(GLOBAL_BATCH, 32, 32, 3)).astype(np.float32)
results = {}
for name in ("default", "mirrored"):
  strategy = runtime.make_strategy(name)
  replicas = strategy.num_replicas_in_sync
  # batch_size is per replica: the same global batch, hence the same lr.
  cfg = config_lib.get_profile("smoke", {
      "pretrain": {"batch_size": GLOBAL_BATCH // replicas, "warmup_epochs": 0.0},
      "runtime": {"strategy": name, "jit_compile": True}})
  noise = rng.uniform(size=(GLOBAL_BATCH, cfg.model.num_patches)).astype(np.float32) \
      if name == "default" else results["default"]["noise"]
  with precision.precision_policy(cfg.runtime.precision), strategy.scope():
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
  run = subprocess.run(
      [sys.executable, "-c", SCRIPT],
      cwd=names.PROJECT_DIR,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert run.returncode == 0, run.stderr[-4000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["replicas"] == [1, 2]
  assert result["jit"] == [True, False]  # XLA:CPU cannot span logical CPUs
  loss_one, loss_two = result["loss"]
  assert abs(loss_one - loss_two) <= 1e-5 * abs(loss_one), result
  assert result["max_weight_diff"] < 1e-6, result
  assert result["max_slot_rel_diff"] < 1e-4, result


MULTI_WORKER_SCRIPT = r"""
import sys
import models  # TensorFlow's environment, before TensorFlow loads
import numpy as np
import tensorflow as tf
from models import config as config_lib, precision, runtime
from models.engine_pretrain import compile_mae, pretrain

strategy_name, out, checkpoints = sys.argv[1], sys.argv[2], sys.argv[3]
GLOBAL_BATCH, STEPS = 8, 3
strategy = runtime.make_strategy(strategy_name)
replicas = strategy.num_replicas_in_sync
overrides = {"model": {"contrastive_weight": 0.0},    # its negatives are per replica
             "pretrain": {"batch_size": GLOBAL_BATCH // replicas, "warmup_epochs": 0.0,
                          "epochs": 2},
             "runtime": {"strategy": strategy_name}}
cfg = config_lib.get_profile("smoke", overrides)
rng = np.random.default_rng(0)
images = rng.normal(size=(GLOBAL_BATCH * STEPS, 32, 32, 3)).astype(np.float32)
noise = rng.uniform(size=(GLOBAL_BATCH * STEPS, cfg.model.num_patches)).astype(np.float32)
# 1. Three steps on fixed batches and masks: comparable with one process.
with precision.precision_policy(cfg.runtime.precision), strategy.scope():
  tf.keras.utils.set_random_seed(0)
  model = compile_mae(cfg, strategy, steps_per_epoch=STEPS)
data = tf.data.Dataset.from_tensor_slices((images, noise)).batch(GLOBAL_BATCH)
loss = model.fit(data, epochs=1, steps_per_epoch=STEPS, verbose=0).history["loss"][0]
fixed = {f"fixed{i}": v.numpy() for i, v in enumerate(model.trainable_variables)}
# 2. The Trainer's own `pretrain` (augmented, random masks, checkpoints).
if strategy_name == "multi_worker":
  trained, _ = pretrain(cfg, images, checkpoints + "/logs", checkpoints + "/ckpt")
  fixed.update({f"pretrain{i}": v.numpy() for i, v in enumerate(trained.trainable_variables)})
  fixed["chief"] = runtime.is_chief(trained.distribute_strategy)
np.savez(out, loss=loss, replicas=replicas, **fixed)
"""


def test_two_worker_processes_train_in_step_and_match_one_process(tmp_path):
  """`runtime.strategy: multi_worker` as two processes on loopback (TF_CONFIG),
  the code path of the Vertex multi-worker pool."""
  import os
  import socket
  import numpy as np

  def free_port():
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      return s.getsockname()[1]

  cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
  shared = tmp_path / "shared"  # the run's folder, as on GCS
  workers = [
      subprocess.Popen(
          [
              sys.executable,
              "-c",
              MULTI_WORKER_SCRIPT,
              "multi_worker",
              str(tmp_path / f"w{i}.npz"),
              str(shared),
          ],
          cwd=names.PROJECT_DIR,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
          env=dict(
              os.environ,
              TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
          ),
      )
      for i in range(2)
  ]
  single = subprocess.run(
      [
          sys.executable,
          "-c",
          MULTI_WORKER_SCRIPT,
          "default",
          str(tmp_path / "one.npz"),
          str(tmp_path / "one"),
      ],
      cwd=names.PROJECT_DIR,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  for w in workers:
    _, err = w.communicate(timeout=900)
    assert w.returncode == 0, err[-3000:]
  w0, w1, one = (np.load(tmp_path / f) for f in ("w0.npz", "w1.npz", "one.npz"))
  assert (int(w0["replicas"]), int(one["replicas"])) == (2, 1)
  fixed = [k for k in one.files if k.startswith("fixed")]
  assert max(float(np.abs(w0[k] - w1[k]).max()) for k in fixed) == 0.0
  assert max(float(np.abs(w0[k] - one[k]).max()) for k in fixed) < 1e-6
  assert abs(float(w0["loss"]) - float(one["loss"])) < 1e-5 * abs(float(one["loss"]))
  # `pretrain` on both: weights in step; only the chief wrote the run's checkpoints.
  trained = [k for k in w0.files if k.startswith("pretrain")]
  assert trained and max(float(np.abs(w0[k] - w1[k]).max()) for k in trained) == 0.0
  assert (bool(w0["chief"]), bool(w1["chief"])) == (True, False)
  assert sorted(p.name for p in (shared / "ckpt").iterdir() if p.name.startswith("ckpt-2"))
