"""Schedule, weight decay and resumable pretraining."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from models import config as config_lib
from models import names
from models.joint_embedding import build_mae
from models.mae import MaskedAutoencoder
from models.engine_pretrain import (compile_mae, load_mae, pretrain, save_mae, warm_start_source)
from models.optimization import WarmupCosine, adamw, no_decay, scaled_lr
from models.precision import precision_policy, resolve_precision, with_resolved_precision


def test_warmup_then_cosine():
  s = WarmupCosine(peak_lr=1.0, total_steps=100, warmup_steps=10, min_lr=0.1)
  lrs = np.array([float(s(i)) for i in range(101)])
  assert lrs[0] == 0.0 and abs(lrs[10] - 1.0) < 1e-6 and abs(lrs[100] - 0.1) < 1e-6
  assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) <= 1e-7)
  np.testing.assert_allclose(lrs[55], 0.1 + 0.9 * 0.5, atol=1e-6)  # half-way


def test_lr_scales_with_batch():
  assert scaled_lr(1.5e-4, 4096) == 1.5e-4 * 16


def test_weight_decay_follows_schedule_and_skips_norms_biases_embeddings():
  model = build_mae(config_lib.get_profile("smoke").model)
  decayed = [v.name for v in model.trainable_variables if not no_decay(v)]
  skipped = [v.name for v in model.trainable_variables if no_decay(v)]
  assert all("kernel" in n for n in decayed) and decayed
  assert any("mask_token" in n for n in skipped)
  assert any("bias" in n for n in skipped) and any("norm" in n for n in skipped)

  # With zero gradients AdamW only decays: w <- w - lr(t) * wd * w.
  kernel = tf.Variable(tf.ones([2, 2]), name="dense/kernel")
  bias = tf.Variable(tf.ones([2]), name="dense/bias")
  schedule = WarmupCosine(peak_lr=0.1, total_steps=10, warmup_steps=2)
  opt = adamw(schedule, 0.5, 0.9, 0.95, [kernel, bias])
  zeros = [tf.zeros_like(kernel), tf.zeros_like(bias)]
  opt.apply_gradients(zip(zeros, [kernel, bias]))  # step 0: lr 0
  np.testing.assert_allclose(kernel.numpy(), 1.0)
  opt.apply_gradients(zip(zeros, [kernel, bias]))  # step 1: lr 0.05
  np.testing.assert_allclose(kernel.numpy(), 1.0 - 0.05 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(bias.numpy(), 1.0)


@pytest.mark.parametrize("cls_token", [False, True])
def test_save_and_load_mae_round_trip(tmp_path, cls_token):
  cfg = dataclasses.replace(config_lib.get_profile("smoke").model, cls_token=cls_token)
  model = build_mae(cfg)
  save_mae(model, str(tmp_path))
  loaded = load_mae(str(tmp_path))
  imgs = tf.random.normal([2, 32, 32, 3])
  np.testing.assert_allclose(loaded.embed(imgs).numpy(), model.embed(imgs).numpy(), rtol=1e-6)


def test_an_mae_saved_before_the_contrastive_term_loads_as_the_pure_mae(tmp_path):
  """Its config.json has no contrastive_weight: it was trained without one
  (and has no projector), whatever today's default."""
  cfg = dataclasses.replace(config_lib.get_profile("smoke").model, contrastive_weight=0.0)
  model = build_mae(cfg)
  save_mae(model, str(tmp_path))
  config_file = tmp_path / "config.json"
  saved = json.loads(config_file.read_text())
  del saved["contrastive_weight"], saved["uniformity_weight"]
  config_file.write_text(json.dumps(saved))
  assert config_lib.ModelConfig().contrastive_weight > 0  # today's default differs
  loaded = load_mae(str(tmp_path))
  assert loaded.cfg.contrastive_weight == 0.0 and type(loaded) is MaskedAutoencoder
  imgs = tf.random.normal([2, 32, 32, 3])
  np.testing.assert_allclose(loaded.embed(imgs).numpy(), model.embed(imgs).numpy(), rtol=1e-6)


def test_an_mae_saved_before_contrastive_blocks_loads_with_its_one_block_projector(tmp_path):
  """A config.json from before `contrastive_blocks` (and the teacher): its
  projector read the last block's tokens, whatever today's default."""
  cfg = dataclasses.replace(
      config_lib.get_profile("smoke").model, contrastive_weight=0.03, contrastive_blocks=1
  )
  model = build_mae(cfg)
  save_mae(model, str(tmp_path))
  config_file = tmp_path / "config.json"
  saved = json.loads(config_file.read_text())
  for field in ("contrastive_blocks", "teacher_momentum", "teacher_mask_ratio"):
    del saved[field]
  config_file.write_text(json.dumps(saved))
  loaded = load_mae(str(tmp_path))
  assert loaded.cfg.contrastive_blocks == 1 and loaded.teacher is None
  assert loaded.projector.fc1.kernel.shape[0] == cfg.embed_dim
  imgs = tf.random.normal([2, 32, 32, 3])
  np.testing.assert_allclose(loaded.embed(imgs).numpy(), model.embed(imgs).numpy(), rtol=1e-6)


def _blessed_model_carrying(tmp_path, model_cfg, data_digest="digest-of-span-1"):
  """A linear probe model's serving dir whose artifact carries an MAE of
  `model_cfg` trained on data with `data_digest`; returns (serving dir, MAE)."""
  serving = tmp_path / "model" / "Format-Serving"
  serving.mkdir(parents=True)
  mae = build_mae(model_cfg)
  save_mae(mae, names.carried_mae_dir(str(serving)), training={"data_digest": data_digest})
  return str(serving), mae


def test_warm_start_takes_the_blessed_models_mae_only_when_it_fits(tmp_path):
  cfg = config_lib.get_profile("smoke")
  serving, _ = _blessed_model_carrying(tmp_path, cfg.model)
  source, reason = warm_start_source(cfg, serving, "digest-of-span-2")
  assert source == names.carried_mae_dir(serving) and source in reason

  assert warm_start_source(cfg, None, "d") == (None, "no blessed model trained on an earlier span")
  never = config_lib.get_profile("smoke", {"pretrain": {"warm_start": "never"}})
  assert warm_start_source(never, serving, "d") == (None, "pretrain.warm_start is never")
  # The same examples: nothing new to learn from them.
  source, reason = warm_start_source(cfg, serving, "digest-of-span-1")
  assert source is None and "trained on these same examples" in reason
  # Another architecture: from scratch, naming what differs.
  wider = config_lib.get_profile("smoke", {"model": {"embed_dim": 48}})
  source, reason = warm_start_source(wider, serving, "digest-of-span-2")
  assert source is None and "model.embed_dim 32 (now 48)" in reason
  # A loss setting is not the architecture.
  masked = config_lib.get_profile("smoke", {"model": {"mask_ratio": 0.5}})
  assert warm_start_source(masked, serving, "digest-of-span-2")[0] is not None
  # A blessed model pushed before models carried their MAE.
  bare = tmp_path / "old" / "Format-Serving"
  bare.mkdir(parents=True)
  source, reason = warm_start_source(cfg, str(bare), "d")
  assert source is None and "carries no MAE" in reason


def test_a_warm_start_begins_from_the_saved_mae(tmp_path):
  """With a learning rate of 0 (so AdamW neither steps nor decays), the
  pretrained weights are the saved MAE's: the run started from them."""
  cfg = config_lib.get_profile(
      "smoke", {"pretrain": {"epochs": 1, "batch_size": 16, "base_lr": 0.0}}
  )
  serving, saved = _blessed_model_carrying(tmp_path, cfg.model)
  images = np.random.RandomState(0).randn(32, 32, 32, 3).astype(np.float32)
  warm, _ = pretrain(
      cfg,
      images,
      str(tmp_path / "logs"),
      str(tmp_path / "ckpt"),
      initial_mae=names.carried_mae_dir(serving),
  )
  for a, b in zip(warm.mae.trainable_variables, saved.trainable_variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  cold, _ = pretrain(cfg, images, str(tmp_path / "logs2"), str(tmp_path / "ckpt2"))
  assert any(
      not np.array_equal(a.numpy(), b.numpy())
      for a, b in zip(cold.mae.trainable_variables, saved.trainable_variables)
  )


def test_warm_start_settings_are_checked():
  with pytest.raises(ValueError, match="pretrain.warm_start must be one of"):
    config_lib.get_profile("smoke", {"pretrain": {"warm_start": "sometimes"}})
  with pytest.raises(ValueError, match="warm_start_epochs must be at least 1"):
    config_lib.get_profile("smoke", {"pretrain": {"warm_start_epochs": 0}})
  for name in config_lib.PROFILES:
    p = config_lib.get_profile(name).pretrain
    assert p.warm_start_epochs < p.epochs, name  # a warm start costs less


def test_killed_pretraining_resumes_from_last_epoch(tmp_path):
  images = np.random.RandomState(0).randn(64, 32, 32, 3).astype(np.float32)

  def run(epochs, ckpt):
    cfg = config_lib.get_profile("smoke", {"pretrain": {"epochs": epochs, "batch_size": 16}})
    return pretrain(cfg, images, str(tmp_path / "logs"), str(tmp_path / ckpt))

  _, first = run(3, "ckpt")  # a run that stopped after epoch 2 of 3 ...
  assert [h["epoch"] for h in first] == [1, 2, 3]
  # ... is emulated by dropping the newest checkpoint.
  ckpt = str(tmp_path / "ckpt")
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(), ckpt, max_to_keep=None)
  newest = manager.latest_checkpoint
  for suffix in (".index", ".data-00000-of-00001"):
    os.remove(newest + suffix)
  with open(os.path.join(ckpt, "checkpoint"), "w") as f:
    f.write('model_checkpoint_path: "ckpt-2"\n')
  model, resumed = run(3, "ckpt")
  assert [h["epoch"] for h in resumed] == [3]  # only the missing epoch ran
  assert int(model.optimizer.iterations.numpy()) == 3 * 4
  # The same batches and masks as an uninterrupted run: the same weights.
  uninterrupted, _ = run(3, "other")
  for a, b in zip(model.trainable_variables, uninterrupted.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_a_truncated_checkpoint_is_skipped_for_the_one_before(tmp_path, capsys):
  images = np.random.RandomState(0).randn(64, 32, 32, 3).astype(np.float32)
  ckpt = str(tmp_path / "ckpt")
  cfg = config_lib.get_profile("smoke", {"pretrain": {"epochs": 2, "batch_size": 16}})
  pretrain(cfg, images, str(tmp_path / "logs"), ckpt)
  newest = tf.train.latest_checkpoint(ckpt)
  data = newest + ".data-00000-of-00001"
  with open(data, "r+b") as f:  # a write cut short by a crash or a full disk
    f.truncate(os.path.getsize(data) // 2)
  cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, epochs=3))
  model, resumed = pretrain(cfg, images, str(tmp_path / "logs"), ckpt)
  out = capsys.readouterr().err
  assert f"checkpoint {newest} is unreadable" in out and "Resuming from" in out
  assert [h["epoch"] for h in resumed] == [2, 3]  # from epoch 1's checkpoint
  assert int(model.optimizer.iterations.numpy()) == 3 * 4


def test_keras3_is_refused_with_a_clear_error():
  import subprocess
  import sys

  env = dict(os.environ, TF_USE_LEGACY_KERAS="0", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
      [sys.executable, "-c", "from models import runtime; runtime.require_keras2()"],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode != 0
  assert "set TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported" in out.stderr


def _fit_three_steps(precision, xla_splits):
  """Loss per step, start and final weights of the smoke MAE trained from a
  fixed start on a fixed batch with fixed masks. The pure MAE: with a
  contrastive term each micro-batch has its own negatives, so splits change
  that term by design."""
  cfg = config_lib.get_profile(
      "smoke",
      {
          "model": {"contrastive_weight": 0.0},
          "runtime": {"precision": precision, "jit_compile": True, "xla_splits": xla_splits},
      },
  )
  rng = np.random.RandomState(0)
  images = rng.randn(32, 32, 32, 3).astype(np.float32)
  noise = rng.rand(32, cfg.model.num_patches).astype(np.float32)
  tf.keras.utils.set_random_seed(0)
  with precision_policy(precision):
    model = compile_mae(cfg, tf.distribute.get_strategy(), steps_per_epoch=3)
    start = [v.numpy() for v in model.trainable_variables]
    data = tf.data.Dataset.from_tensors((images, noise)).repeat()
    history = model.fit(data, epochs=3, steps_per_epoch=1, verbose=0)
  return model, start, history.history["loss"]


# mixed_float16 takes the LossScaleOptimizer path (scaled loss, unscaled
# gradients, skip on overflow); its tolerance is that of float16 activations.
@pytest.mark.parametrize("precision,rtol", [("float32", 1e-4), ("mixed_float16", 2e-2)])
def test_xla_splits_match_the_whole_batch_step(precision, rtol):
  whole, start, whole_losses = _fit_three_steps(precision, xla_splits=1)
  split, split_start, split_losses = _fit_three_steps(precision, xla_splits=4)
  assert split.xla_splits == 4 and whole.xla_splits == 1
  assert isinstance(split.optimizer, tf.keras.mixed_precision.LossScaleOptimizer) == (
      precision == "mixed_float16"
  )
  for a, b in zip(split_start, start):
    np.testing.assert_array_equal(a, b)  # same start
  np.testing.assert_allclose(split_losses, whole_losses, rtol=rtol)
  assert whole_losses[2] < whole_losses[0]  # it trained
  for a, b in zip(split.trainable_variables, whole.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=rtol / 10, err_msg=a.name)


def test_xla_splits_must_divide_the_batch():
  cfg = config_lib.get_profile("smoke", {"runtime": {"jit_compile": True, "xla_splits": 3}})
  with pytest.raises(ValueError, match="xla_splits must divide pretrain.batch_size 32; got 3"):
    compile_mae(cfg, tf.distribute.get_strategy(), steps_per_epoch=1)


@pytest.mark.parametrize(
    "flags,expected",
    [
        ("fpu sse2 avx2 fma", "float32"),  # AMD Zen 3: emulated bf16
        ("fpu avx2 avx512f avx512_bf16", "mixed_bfloat16"),  # Cooper Lake, Zen 4
        ("fpu avx2 avx512f amx_bf16 amx_tile", "mixed_bfloat16"),  # Sapphire Rapids
    ],
)
def test_auto_precision_uses_bfloat16_only_where_the_cpu_has_it(tmp_path, flags, expected):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
  assert not tf.config.list_physical_devices("GPU")
  assert resolve_precision("auto", "default", str(cpuinfo)) == expected
  assert resolve_precision("auto", "tpu", str(cpuinfo)) == "mixed_bfloat16"
  for explicit in ("float32", "mixed_bfloat16", "mixed_float16"):
    assert resolve_precision(explicit, "default", str(cpuinfo)) == explicit
  # Without /proc/cpuinfo (macOS laptops): the safe float32.
  assert resolve_precision("auto", "default", str(tmp_path / "absent")) == "float32"


def test_auto_precision_is_float16_on_gpu(monkeypatch, tmp_path):
  # No GPU on this machine: the device query is the one part faked here.
  monkeypatch.setattr(
      tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else []
  )
  assert resolve_precision("auto", "mirrored", str(tmp_path / "absent")) == "mixed_float16"


def test_resolved_config_names_the_policy_and_keeps_the_rest():
  cfg = config_lib.get_profile("cpu")
  resolved = with_resolved_precision(cfg)
  assert cfg.runtime.precision == "auto"
  assert resolved.runtime.precision == resolve_precision("auto", "default") != "auto"
  assert resolved.to_dict() == {
      **cfg.to_dict(),
      "runtime": {**cfg.to_dict()["runtime"], "precision": resolved.runtime.precision},
  }


def test_unknown_precision_is_refused():
  with pytest.raises(
      ValueError,
      match="Unknown runtime.precision 'bf16'; expected one of "
      r"\['auto', 'float32', 'mixed_bfloat16', 'mixed_float16'\]",
  ):
    config_lib.get_profile("cpu", {"runtime": {"precision": "bf16"}})


def test_an_mae_with_a_momentum_teacher_saves_and_loads(tmp_path):
  """The teacher is saved with the model (a resumed run needs it) and
  loads back; the embedding is the student's."""
  cfg = dataclasses.replace(config_lib.get_profile("smoke").model, teacher_momentum=0.99)
  model = build_mae(cfg)
  for teacher, _ in model.teacher_pairs():  # not the student's copy: a real round trip
    teacher.assign(teacher + 0.25)
  save_mae(model, str(tmp_path))
  loaded = load_mae(str(tmp_path))
  for (t, _), (u, _) in zip(model.teacher_pairs(), loaded.teacher_pairs()):
    np.testing.assert_array_equal(t.numpy(), u.numpy())
  imgs = tf.random.normal([2, 32, 32, 3])
  np.testing.assert_allclose(loaded.embed(imgs).numpy(), model.embed(imgs).numpy(), rtol=1e-6)


def test_autograph_leaves_keras_internals_alone_and_still_converts_our_layers():
  """models.runtime gives tf_keras the rule TensorFlow gives `keras`: its own
  code is called as written; a layer's `call` with a loop over a tensor still
  traces, as Keras converts `call` itself."""
  from tensorflow.python.autograph.core import config as autograph_config
  from tensorflow.python.autograph.impl import conversion
  from models import runtime

  assert conversion.is_allowlisted(tf.keras.layers.Layer.__call__)
  assert conversion.is_allowlisted(tf.keras.Model.fit)
  assert not conversion.is_allowlisted(MaskedAutoencoder.call)
  rules = len(autograph_config.CONVERSION_RULES)
  runtime.leave_keras_internals_unconverted()  # a second call adds nothing
  assert len(autograph_config.CONVERSION_RULES) == rules

  class RowSums(tf.keras.layers.Layer):

    def call(self, x):
      total = tf.zeros([tf.shape(x)[0]])
      for column in tf.range(tf.shape(x)[1]):  # needs autograph: a tf.while_loop
        total += x[:, column]
      return total

  model = tf.keras.Sequential([tf.keras.Input([3]), RowSums()])
  got = model.predict(np.ones([4, 3], np.float32), verbose=0)
  np.testing.assert_allclose(got, [3.0] * 4)
