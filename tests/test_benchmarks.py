"""Every benchmark in benchmarks/ runs: its real command line (`main(argv)`;
the ones that need processes of their own start them as they always do) on
real CIFAR-10 at tiny sizes, and the figures it prints are there and are
finite numbers. At these sizes the figures say nothing about the model or
the machine: what is tested is that the benchmarks keep working as the code
they measure changes (issue 24)."""

import json
import math
import os
import re

import numpy as np

import pytest

from benchmarks import kill_matrix, pretrain_memory, probe_ablation, probe_quality
from benchmarks import roofline, serving_soak, step_profile, train_throughput
from benchmarks import near_duplicates
from benchmarks import search as search_benchmark
from benchmarks import search_page as search_page_benchmark
from benchmarks import serving as serving_benchmark
from models import config as config_lib
from models import names

# A printed figure: a decimal number, or what a broken one prints as.
NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"


def figures(pattern: str, text: str):
  """The numbers NUM captured by `pattern` in its first match in `text`, as
  floats; fails, showing `text`, when there is no match or one is not finite."""
  match = re.search(pattern, text, re.MULTILINE)
  assert match, f"no line matching {pattern!r} in:\n{text}"
  values = [float(v) for v in match.groups()]
  assert all(math.isfinite(v) for v in values), f"{match.group(0)!r} is not finite"
  return values


def all_figures(pattern: str, text: str):
  """`figures` of every match of `pattern` in `text` (at least one)."""
  found = [m.group(0) for m in re.finditer(pattern, text, re.MULTILINE)]
  assert found, f"no line matching {pattern!r} in:\n{text}"
  return [figures(pattern, line) for line in found]


def test_reference_model_follows_data_image_size():
  # The throughput reference is a model shape like any profile's: the image
  # size is data.image_size's.
  assert "image_size" not in config_lib.REFERENCE_MODEL
  cfg = config_lib.get_profile(
      "cpu", {"model": dict(config_lib.REFERENCE_MODEL), "data": {"image_size": 48}}
  )
  assert (cfg.model.depth, cfg.model.embed_dim, cfg.model.image_size) == (6, 128, 48)
  assert cfg.model.contrastive_weight == 0.0


def test_a_contrastive_step_counts_the_matmuls_of_both_views():
  import dataclasses

  two_views = config_lib.get_profile("cpu").model
  one_view = dataclasses.replace(two_views, contrastive_weight=0.0)
  assert two_views.contrastive_weight > 0
  assert roofline.mae_train_flops(two_views) == 2 * roofline.mae_train_flops(one_view)


def test_a_local_view_costs_the_encoder_on_its_own_patches():
  """A 16 x 16 local view at patch 4 is 16 tokens through the encoder, no
  decoder: as much encoder work as a global view masked to its 16 visible
  patches, and the local views add it once each."""
  import dataclasses

  m = config_lib.get_profile("cpu").model
  no_decoder = dataclasses.replace(m, decoder_depth=0, decoder_embed_dim=0)
  encoder_of_one_masked_view = roofline.mae_train_flops(no_decoder) / 2
  added = roofline.mae_train_flops(m, 4, 16) - roofline.mae_train_flops(m)
  assert added == pytest.approx(4 * encoder_of_one_masked_view)


def test_roofline(capsys):
  bounds = roofline.main(
      [
          "--model",
          "reference",
          "--precision",
          "float32",
          "--matmul-size",
          "256",
          "--repeats",
          "3",
      ]
  )
  out = capsys.readouterr().out
  train, embed = figures(
      rf"^model: encoder 6x128, .* image 32, .*: MAE training step {NUM} "
      rf"MFLOP per image, embedding {NUM} MFLOP per image$",
      out,
  )
  assert train > 0 and embed > 0
  peak, train_bound, embed_bound = figures(
      rf"^float32: 256x256 matmul at {NUM} GFLOP/s: at most {NUM} img/s \(MAE training "
      rf"step\), {NUM} img/s \(embedding\)$",
      out,
  )
  assert peak > 0 and train_bound > 0 and embed_bound > 0
  assert set(bounds) == {"float32"} and all(
      math.isfinite(b) and b > 0 for b in bounds["float32"].values()
  )


def test_train_throughput_reference_model(small_cifar_dir, capsys):
  # The default --model reference (config.REFERENCE_MODEL), 2 steps of 16
  # images after a warm-up epoch, with the matmul bound.
  train_throughput.main(
      [
          "--data",
          small_cifar_dir,
          "--batch-size",
          "16",
          "--steps",
          "2",
          "--epochs",
          "2",
          "--precision",
          "float32",
          "--jit",
          "off",
          "--pretrain-overrides",
          '{"hue_jitter": 0.1}',
          "--roofline",
      ]
  )
  out = capsys.readouterr().out
  assert re.search(
      r"^model: encoder 6x128 \(4 heads\), decoder 2x64, patch 4, .* batch 16",
      out,
      re.MULTILINE,
  ), out
  figures(
      rf"^float32: 2048x2048 matmul at {NUM} GFLOP/s, {NUM} MFLOP per image in "
      rf"matmuls: at most {NUM} img/s$",
      out,
  )
  result = (
      rf"^float32\s+XLA off\s+{NUM} img/s  \({NUM} s per 50,000-image epoch\), "
      rf"{NUM}% of the matmul bound$"
  )
  ips, epoch_seconds, share = figures(result, out)
  assert ips > 0 and epoch_seconds > 0 and share > 0
  assert len(all_figures(result, out.split("summary:")[1])) == 1


def test_step_profile(small_cifar_dir, capsys):
  # The cpu profile's XLA step (2 splits) on the reference model, 2 traced
  # steps of 16 images after 2 untraced ones.
  step_profile.main(
      [
          "--data",
          small_cifar_dir,
          "--batch-size",
          "16",
          "--warmup",
          "2",
          "--steps",
          "2",
          "--precision",
          "float32",
      ]
  )
  out = capsys.readouterr().out
  ms, ips, share, peak, busy = figures(
      rf"^float32: {NUM} ms per step, {NUM} img/s, {NUM}% of the matmul bound \({NUM} "
      rf"GFLOP/s on a 2048x2048 matmul\); {NUM} of \d+ cores busy$",
      out,
  )
  assert ms > 0 and ips > 0 and share > 0 and peak > 0 and busy > 0
  kinds = {line[2] for line in re.findall(rf"^ +{NUM} ms +(\d+)%  (.+)$", out, re.MULTILINE)}
  assert step_profile.MATMUL in kinds and step_profile.ELEMENTWISE in kinds, out
  per_core, of_peak = figures(
      rf"^  the matmuls alone: {NUM} GFLOP/s per core busy in them, "
      rf"{NUM}% of the 2048x2048 matmul's per core$",
      out,
  )
  assert per_core > 0 and of_peak > 0


def test_pretrain_memory(smoke_run, capsys):
  # One N, streamed (budget 0), in its own process as every N is.
  pretrain_memory.main(
      [
          "--examples",
          "64",
          "--epochs",
          "1",
          "--profile",
          "smoke",
          "--memory-budget-mb",
          "0",
          "--metadata",
          smoke_run.metadata_path,
      ]
  )
  out = capsys.readouterr().out
  n, rss, ips = figures(rf"^N=\s*{NUM}  streamed\s+peak RSS\s+{NUM} MB\s+{NUM} img/s$", out)
  assert n == 64 and rss > 0 and ips > 0
  figures(
      rf"^  \s*64 images, streamed \(budget 0 MB\): peak RSS {NUM} MB, {NUM} img/s "
      r"\(last epoch\)$",
      out.split("summary:")[1],
  )


def test_probe_quality(smoke_run, tmp_path, capsys):
  probe_quality.main(
      [
          "--epochs",
          "1",
          "--profile",
          "smoke",
          "--overrides",
          '{"probe": {"epochs": 1}}',
          "--metadata",
          smoke_run.metadata_path,
          "--work-dir",
          str(tmp_path),
          "--export",
          str(tmp_path / "served" / "1"),
      ]
  )
  lines = capsys.readouterr().out.strip().splitlines()
  settings = json.loads(lines[-2])
  assert settings["profile"] == "smoke" and settings["overrides"]["pretrain"]["epochs"] == 1
  result = lines[-1]
  accuracies = figures(
      r"^epochs 1: LP top-1 "
      + NUM
      + ", "
      + "".join(rf"kNN\(k={k}\) top-1 {NUM}, " for k in names.KNN_KS),
      result,
  )
  assert all(0 <= a <= 1 for a in accuracies)
  ips, pretrain_s, probe_s = figures(
      rf"MAE {NUM} img/s, pretrain {NUM} s, probe {NUM} s, models in ", result
  )
  assert ips > 0 and pretrain_s >= 0 and probe_s >= 0
  # The pretrained MAE is kept for --mae; the probed classifier is served as exported.
  assert os.path.exists(os.path.join(tmp_path, "mae", "model", names.MAE_CONFIG_FILE))
  import tensorflow as tf

  exported = tf.saved_model.load(str(tmp_path / "served" / "1"))
  assert names.CLASSIFY_EXAMPLES_BFLOAT16 in exported.signatures


def test_probe_ablation(smoke_run, capsys):
  from tfx.utils import path_utils
  from pipeline.run_outputs import RunOutputs

  mae = path_utils.serving_model_path(
      RunOutputs.load(smoke_run.output_dir).uri(names.MAE_TRAINER, "Model")
  )
  depth = smoke_run.run_config.model.depth
  blocks = sorted({1, depth})
  probe_ablation.main(
      [
          "--mae",
          mae,
          "--profile",
          "smoke",
          "--feature-blocks",
          ",".join(map(str, blocks)),
          "--whitening",
          "off,1e-4",
          "--logreg",
          "--probes",
          '[{"epochs": 1}]',
          "--metadata",
          smoke_run.metadata_path,
      ]
  )
  out = capsys.readouterr().out
  summary = out.split("\nsummary (test top-1 on ")[1].splitlines()
  assert re.match(r"[\d,]+ images\):$", summary[0]), summary[0]
  assert re.search(
      r" LP +" + " +".join(f"kNN k={k}" for k in names.KNN_KS) + " +probe s$",
      summary[1],
  ), summary[1]
  rows = summary[2:]
  # feature blocks x whitening x (logistic regression, the one probe)
  assert len(rows) == len(blocks) * 2 * 2, out
  for row in rows:
    *accuracies, seconds = [float(v) for v in row.split()[-len(names.KNN_KS) - 2 :]]
    assert all(0 <= a <= 1 for a in accuracies), row
    assert math.isfinite(seconds) and seconds >= 0, row
  assert sum("logistic regression" in r for r in rows) == len(blocks) * 2


@pytest.mark.server
def test_serving(model_base, small_cifar_dir, capsys):
  serving_benchmark.main(
      [
          "--model-dir",
          model_base,
          "--data",
          small_cifar_dir,
          "--images",
          "16",
          "--batch-sizes",
          "1,8",
          "--requests",
          "8",
          "--clients",
          "1,2",
          "--cold-starts",
          "1",
          "--quality",
      ]
  )
  out = capsys.readouterr().out
  assert re.search(r"^model .* \(version \d+\); 16 CIFAR-10 test PNGs$", out, re.MULTILINE)
  steps = dict(
      (m.group(1).strip(), float(m.group(2)))
      for m in re.finditer(rf"^  (\S.*?)\s+{NUM}$", out.split("\n2. ")[0], re.MULTILINE)
  )
  assert len(steps) == 11 and all(ms >= 0 for ms in steps.values()), steps
  for precision in ("float32", "bfloat16"):
    for how in ("as saved", "compiled"):
      ips, share = figures(rf"^  {precision}, {how}:\s+{NUM} img/s, {NUM}% of the bound$", out)
      assert ips > 0 and share > 0
  cells = all_figures(
      rf"^    (?:REST|gRPC)\s+[12] client\(s\),\s+[18] image\(s\) a "
      rf"request: p50\s+{NUM}  p99\s+{NUM}\s+{NUM} img/s$",
      out,
  )
  assert len(cells) == 3 * 2 * 2 * 2  # configurations x APIs x sizes x clients
  assert all(0 < p50 <= p99 and ips > 0 for p50, p99, ips in cells)
  memory = all_figures(rf"^  (?:search index|SavedModel|serving_default's).*?\s+{NUM} MB$", out)
  assert len(memory) == 3 and memory[1][0] > 0, memory  # loading a SavedModel costs memory
  starts = all_figures(rf"cold start {NUM} s, RSS {NUM} MB after loading$", out)
  assert len(starts) == 3 and all(s > 0 and rss > 0 for s, rss in starts)
  for precision in ("float32", "bfloat16"):
    lp, knn = figures(rf"^  {precision}: LP {NUM} %, k-NN {NUM} %$", out)
    assert 0 <= lp <= 100 and 0 <= knn <= 100
  low, mean = figures(rf"cosine bfloat16 vs float32 embeddings: min {NUM}, mean {NUM}$", out)
  assert 0.99 < low <= mean <= 1.0 + 1e-6
  # The smoke model's probe reads no near-empty direction: bfloat16 and 1e-3
  # noise move its accuracy on the 100 test images by at most 2 of them.
  (lp_float32, _), (lp_bfloat16, _) = (
      figures(rf"^  {p}: LP {NUM} %, k-NN {NUM} %$", out) for p in ("float32", "bfloat16")
  )
  (lp_noisy,) = figures(
      rf"^  float32 \+ 0.001 noise \(relative, on the embedding\): LP {NUM} %$", out
  )
  assert abs(lp_bfloat16 - lp_float32) <= 2 and abs(lp_noisy - lp_float32) <= 2


@pytest.mark.server
def test_serving_soak(model_base, smoke_run, small_cifar_dir, tmp_path, capsys):
  import tensorflow_transform as tft
  from pipeline.runs import pipeline_inputs
  from tests.conftest import export_random_classifier

  # Another model to push half-way (the served one again would be no new version).
  export = tmp_path / "export"
  export_random_classifier(
      tft.TFTransformOutput(pipeline_inputs(smoke_run.metadata_path)[1]),
      export,
      seed=11,
  )
  serving_soak.main(
      [
          "--model-dir",
          model_base,
          "--data",
          small_cifar_dir,
          "--seconds",
          "2",
          "--clients",
          "2",
          "--push",
          str(export),
      ]
  )
  out = capsys.readouterr().out
  pushed = re.search(r"^pushed version (\d+)$", out, re.MULTILINE)
  assert pushed, out
  assert int(pushed.group(1)) not in names.pushed_versions(os.listdir(model_base))
  for soak in (r"soak, 2 clients, 2 s", r"second soak \(1 s\)"):
    line = re.search(
        rf"^{soak}: (\d+) responses (\{{.*?\}}), dropped connections \d+, "
        rf"served p50 {NUM} ms p99 {NUM} ms, versions \['\d+'.*\]$",
        out,
        re.MULTILINE,
    )
    assert line, out
    by_status = {int(k): int(v) for k, v in re.findall(r"(\d+): (\d+)", line.group(2))}
    assert sum(by_status.values()) == int(line.group(1)) > 0
    # Good requests served, the bad ones (every third) refused.
    assert by_status.get(200) and any(400 <= s < 500 for s in by_status), line.group(0)
    p50, p99 = figures(rf"served p50 {NUM} ms p99 {NUM} ms", line.group(0))
    assert 0 < p50 <= p99
  rss = dict(
      re.findall(
          rf"(start|before push|end|after a second soak) {NUM}",
          re.search(r"^RSS MB: .*$", out, re.MULTILINE).group(0),
      )
  )
  assert set(rss) == {"start", "before push", "end", "after a second soak"}
  assert all(math.isfinite(float(v)) and float(v) > 0 for v in rss.values())


def test_kill_matrix(cifar10_dir, cifar10_sample, smoke_run, tmp_path, capsys):
  # One cheap point: the child kills itself after copying the model into the
  # Pusher's staging folder, and the re-run only has the Pusher left. The
  # smoke run is the uninterrupted reference: the same images (the first of
  # CIFAR-10's train and test batches) and epochs.
  (train, _), (test, _) = cifar10_sample
  epochs = config_lib.get_profile("smoke").pretrain.epochs
  rows = kill_matrix.main(
      [
          "--data",
          cifar10_dir,
          "--points",
          "pusher_copy",
          "--train",
          str(len(train)),
          "--test",
          str(len(test)),
          "--mae-epochs",
          str(epochs),
          "--reference-dir",
          smoke_run.output_dir,
          "--work-dir",
          str(tmp_path),
      ]
  )
  out = capsys.readouterr().out
  assert len(rows) == 1, out
  row = rows[0]
  assert row["point"] == "pusher_copy"
  assert row["kill"] == "killed itself (fault injected)", (row, out)
  assert row["rerun_status"] == 0, row.get("error")
  assert math.isfinite(row["rerun_seconds"]) and math.isfinite(row["max_weight_difference"])
  assert len(row["states"]) == 2  # the killed run and its re-run, in MLMD
  table = out.split(kill_matrix.HEADER)[-1]
  line = re.search(
      r"^\| pusher_copy \| killed itself \(fault injected\) \| exit 0 in "
      rf"{NUM} s \| .* \| {NUM} \| {NUM} \| .* \| 2 runs, last all complete: "
      rf"True \| {NUM} \|$",
      table,
      re.MULTILINE,
  )
  assert line, out
  assert all(math.isfinite(float(v)) for v in line.groups())


def test_search(smoke_run, cifar10_dir, tmp_path, capsys):
  # 300 train images x 10 augmentations embedded through the smoke model's
  # serving_default, 100 test images to tune and score, 100 more to check;
  # then again from the cache.
  cache = str(tmp_path / "corpus.npz")
  argv = [
      "--model-dir",
      smoke_run.serving_model_dir,
      "--data",
      cifar10_dir,
      "--sizes",
      "3000",
      "--images",
      "300",
      "--queries",
      "100",
      "--check-queries",
      "100",
      "--single-queries",
      "50",
      "--cache",
      cache,
  ]
  rows = search_benchmark.main(argv)
  out = capsys.readouterr().out
  assert re.search(r"^augmentation round 10/10: 300 images in ", out, re.MULTILINE), out
  assert re.search(r"^host: .*\(family .*\), \d+ CPUs, .*avx512_bf16 (yes|no)", out, re.MULTILINE)
  summary = out.split("summary:")[1]
  assert search_benchmark.TABLE_HEADER.format(k=10) in summary
  for kind in search_benchmark.KINDS:
    ((build, wall, peak, disk, per_vector, loaded, recall, fresh, p50, p99, qps),) = all_figures(
        rf"^\| 3000 \| {kind} \| [^|]+ \|" + r" {} \|".format(NUM) * 11 + "$",
        summary,
    )
    assert 0 <= build <= wall and disk > 0 and per_vector > 0, kind
    assert 0 <= recall <= 1 and 0 <= fresh <= 1 and 0 < p50 <= p99 and qps > 0, kind
  assert [(r["n"], r["kind"]) for r in rows] == [(3000, k) for k in search_benchmark.KINDS]
  assert next(r for r in rows if r["kind"] == "exact")["recall"] >= 0.99
  for kind in ("scann", "faiss_hnsw"):
    figures(rf"^N=3000: {kind} p50 {NUM} ms vs exact {NUM} ms: {NUM}x faster", summary)
    assert re.search(rf"^targets at N=3000, {kind}: p50 ", summary, re.MULTILINE), summary
  # The cache is reused: nothing is embedded again.
  search_benchmark.main(argv + ["--kinds", "exact"])
  out = capsys.readouterr().out
  assert re.search(
      r"^cache .*: 3000 corpus and 200 query embeddings of model version \d+ "
      r"\(made .*\), reused$",
      out,
      re.MULTILINE,
  ), out
  assert "augmentation round" not in out and "embedding through" not in out


def test_near_duplicates(smoke_run, cifar10_dir, tmp_path, capsys):
  # 30 test images x 6 alterations through the smoke model's serving_default.
  # --max-fp 1 lets any threshold qualify (a smoke model's figures mean
  # nothing), so one is picked and the test-vs-train listing runs, on 30
  # test and 60 train images; then all again from the caches.
  cache, folder = str(tmp_path / "calibration.npz"), str(tmp_path / "cifar10")
  argv = [
      "--model-dir",
      smoke_run.serving_model_dir,
      "--data",
      cifar10_dir,
      "--images",
      "30",
      "--thresholds",
      "0.5:0.95:0.05",
      "--max-fp",
      "1",
      "--cache",
      cache,
      "--test-vs-train",
      folder,
      "--test-limit",
      "30",
      "--train-limit",
      "60",
  ]
  result = near_duplicates.main(argv)
  out = capsys.readouterr().out
  assert re.search(
      r"^embedded 210 images \(30 originals, 6 copies each\) in ", out, re.MULTILINE
  ), out
  assert re.search(r"^host: .*\(family .*\), \d+ CPUs, .*avx512_bf16 (yes|no)", out, re.MULTILINE)
  summary = out.split("summary:")[1]
  assert near_duplicates.TABLE_HEADER in summary
  kinds = list(near_duplicates.ALTERATIONS)
  rows = all_figures(
      r"^\| \**" + NUM + r"\** \|" + r" {} \|".format(NUM) * (3 + len(kinds) + 1) + "$",
      summary,
  )
  assert all(0 <= v <= 1 for row in rows for v in row), rows
  assert len(result["rows"]) == 10 and result["chosen"]["threshold"] == 0.5
  # The target is judged at the model's own threshold, through its projection.
  from serving.model_store import load_version

  projection, threshold = load_version(smoke_run.serving_model_dir).duplicate_projection()
  assert f"compared through its {projection.shape[1]}-d duplicate projection" in summary
  (default,) = figures(rf"^default threshold: {NUM}, the model's own", summary)
  assert default == pytest.approx(threshold, abs=5e-4)
  at = re.escape(f"{threshold:.3f}")
  for name in kinds:
    (recall,) = figures(
        rf"^target at {at}, {name}: recall {NUM} \(>= 0\.95: (?:met|NOT met)\)$", summary
    )
    assert recall == pytest.approx(result["default"]["recall"][name], abs=5e-5)
  fps = all_figures(
      rf"^target at {at}: different images flagged, .*: {NUM} \(<= 0\.01: (?:met|NOT met)\)$",
      summary,
  )
  assert len(fps) == 3 and all(0 <= v <= 1 for v, in fps)
  pairs, a, b = figures(
      rf"^serving\.duplicates: {NUM} near-duplicate pairs between 30 and 60 "
      rf"items \(threshold 0\.5, up to 10 neighbours per item\); items with a "
      rf"duplicate: {NUM} of 30 .* in the first, {NUM} of 60 in the second",
      summary,
  )
  assert pairs == len(result["test_vs_train"].pairs) and 0 <= a <= 30 and 0 <= b <= 60
  with open(os.path.join(folder, "test_vs_train.tsv")) as f:
    lines = f.read().splitlines()
  assert lines[0].split("\t") == ["id_a", "class_a", "id_b", "class_b", "score"]
  assert len(lines) == pairs + 1
  # The embeddings themselves (cached: the projection is applied after),
  # judged at DUPLICATE_THRESHOLD; not with the listing, which compares what
  # serving.duplicates compares.
  plain = argv[: argv.index("--test-vs-train")] + ["--no-projection"]
  near_duplicates.main(plain)
  out = capsys.readouterr().out
  assert "compared on the embedding itself (--no-projection)" in out
  assert "default threshold: 0.650, serving.duplicates.DUPLICATE_THRESHOLD" in out
  with pytest.raises(SystemExit, match="--no-projection with --test-vs-train"):
    near_duplicates.main(argv + ["--no-projection"])
  # The caches are reused: nothing is embedded again.
  near_duplicates.main(argv)
  out = capsys.readouterr().out
  assert re.search(
      r"^cache .*: 30 originals x 6 alterations of model version \d+ \(made .*\), reused$",
      out,
      re.MULTILINE,
  ), out
  assert (
      len(
          re.findall(
              r"^.*cifar10_(test|train)\.npz: \d+ embeddings of model version \d+, reused$",
              out,
              re.MULTILINE,
          )
      )
      == 2
  ), out
  assert "embedded" not in out


def test_transfer_knn(model_base, tmp_path, capsys):
  from benchmarks import transfer_knn

  transfer_knn.main(
      [
          "--shapes",
          str(tmp_path / "shapes"),
          "--per-class",
          "12",
          "--model-dir",
          model_base,
      ]
  )
  out = capsys.readouterr().out
  assert re.search(r"shapes: 72 images, 6 classes, \d+ bank / \d+ queries; k-NN k = 20$", out, re.M)
  accuracies = [
      figures(rf"^  raw pixels, cosine:\s+{NUM} %$", out)[0],
      figures(rf"^  raw pixels centred, cosine:\s+{NUM} %$", out)[0],
      figures(rf"^  {re.escape(model_base)}/\d+: {NUM} %$", out)[0],
  ]
  assert all(0 <= a <= 100 for a in accuracies)
  assert len(os.listdir(tmp_path / "shapes" / "ring")) == 12  # the set was written


def test_transfer_knn_digits(tmp_path, capsys):
  """scikit-learn's digits, written once in both variants: plain ones are
  the digit enlarged; coloured ones put it somewhere in two colours."""
  from benchmarks import transfer_knn
  from sklearn.datasets import load_digits

  digit = load_digits().images[0]
  plain = transfer_knn.digit_image(digit, "plain", np.random.default_rng(0))
  assert plain.shape == (32, 32, 3) and np.all(plain[..., 0] == plain[..., 2])
  coloured = [
      transfer_knn.digit_image(digit, "coloured", np.random.default_rng(i)) for i in range(2)
  ]
  assert (
      coloured[0].shape == (32, 32, 3)
      and np.abs(coloured[0].mean((0, 1)) - coloured[1].mean((0, 1))).max() > 5
  )
  with pytest.raises(ValueError, match="unknown digits variant 'bold'"):
    transfer_knn.digit_image(digit, "bold", np.random.default_rng(0))
  transfer_knn.main(["--digits", str(tmp_path / "digits")])
  out = capsys.readouterr().out
  for variant in transfer_knn.DIGIT_VARIANTS:
    assert re.search(rf"digits/{variant}: 1797 images, 10 classes, \d+ bank / \d+ queries", out)
  (plain_pixels,), (coloured_pixels,) = all_figures(rf"^  raw pixels, cosine:\s+{NUM} %$", out)[:2]
  assert plain_pixels > 90 > coloured_pixels  # pixels see the plain digits only
  written = os.path.getmtime(tmp_path / "digits" / "plain" / "0" / "0000.png")
  transfer_knn.main(["--digits", str(tmp_path / "digits")])  # reused, not rewritten
  assert os.path.getmtime(tmp_path / "digits" / "plain" / "0" / "0000.png") == written


def test_budget_figure(tmp_path, capsys):
  from benchmarks import budget_figure

  points = tmp_path / "points.json"
  points.write_text(
      json.dumps(
          {
              "host": "a host",
              "points": [
                  {"recipe": "a", "minutes": 5.0, "lp": 0.6, "knn": 0.61, "how": "x"},
                  {
                      "recipe": "a",
                      "minutes": 12.0,
                      "lp": 0.66,
                      "knn": 0.65,
                      "how": "y",
                  },
                  {"recipe": "b", "minutes": 6.0, "lp": 0.62, "knn": 0.6, "how": "z"},
              ],
          }
      )
  )
  budget_figure.main([str(points)])
  out = capsys.readouterr().out
  assert "| a | 12.0 | 66.00 % | 65.00 % |" in out
  assert (tmp_path / "points.png").stat().st_size > 1000


@pytest.mark.server
def test_search_page(model_base, tmp_path, capsys):
  shot = tmp_path / "page.png"
  figures = search_page_benchmark.main(
      ["--model-dir", model_base, "--repeats", "1", "--screenshot", str(shot)]
  )
  out = capsys.readouterr().out
  assert re.search(r"^version \d+: \d+ thumbnails, [\d.]+ MB \(\d+ bytes an image", out, re.M), out
  for line in ("page to ready: ", "search by id, 12 results and their thumbnails: ", "first "):
    assert line in out, out
  assert all(v > 0 for v in figures.values()) and shot.stat().st_size > 10_000
