"""A pipeline that keeps running, through the real DAG.

BeamDagRunner, SQLite MLMD, TFMA: image folders arriving as span-<N>/ folders, run one after the
other as a scheduled job runs them. Each step below is one run, in order, on
the same output folder:

  1. --span 1: the first span, from scratch;
  2. the newest span (2): compared with span 1, warm-started from span 1's model;
  3. again, nothing new: every step from the cache, no new version;
  4. span 3 lacks a class: stopped, naming it; the served version stays;
  5. span 3 again, drift only warned, with a wider encoder, the MAE on the
     newest span only and a gate nobody passes: from scratch (the
     architecture differs, said why), not blessed: the served model stays,
     pushed again with its index extended by span 3 (an index-only version);
  6. the same, with an image of span 1 (and an id nobody has) in the data
     folder's removed.txt: nothing trained, a version without that image.

After each, the served search index holds every image of every span the
gate passed so far, less the removed ones.
"""

import io
import json
import os
import re
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from models import names
from pipeline import local_runner, runs
from tests.conftest import cifar10_class_names, pipeline_config_of, run_pipeline_process, save_image

# Runs the pipeline: `make test-fast` leaves this module out.
pytestmark = pytest.mark.pipeline

CLASSES = (0, 3, 8)  # airplane, cat, ship
PER_CLASS = 32  # per span: ~26 train, ~6 test images a class


def _write_span(root, span, images, labels, classes=CLASSES):
  names_ = cifar10_class_names()
  for c in classes:
    for i, image in enumerate(images[labels == c][:PER_CLASS]):
      save_image(image, os.path.join(root, f"span-{span}", names_[c], f"{i:03d}.png"))


class Run(NamedTuple):
  config: local_runner.configs.PipelineConfig
  returncode: int
  log: str  # the run log (stderr)
  nodes: dict  # node id -> its row of the run (runs.last_run_nodes)


def _run(root, output, *flags) -> Run:
  """One run as a scheduled job starts it: `python -m pipeline.local_runner`."""
  argv = [
      "--profile",
      "smoke",
      "--data",
      root,
      "--output-dir",
      output,
      "--schema",
      os.path.join(output, "schema.pbtxt"),
      *flags,
  ]
  done = run_pipeline_process(argv, timeout=1200)
  config = pipeline_config_of(argv)
  return Run(
      config,
      done.returncode,
      done.stderr,
      runs.last_run_nodes(config.metadata_path, config.pipeline_name),
  )


def _versions(config):
  return names.pushed_versions(os.listdir(config.serving_model_dir))


@pytest.fixture(scope="module")
def span_runs(cifar10_sample, tmp_path_factory):
  """The five runs of the module doc, in order: {step: Run}."""
  (train, train_labels), (test, test_labels) = cifar10_sample
  images = np.concatenate([train, test])
  labels = np.concatenate([train_labels, test_labels])
  root = str(tmp_path_factory.mktemp("spans") / "arrivals")
  output = str(tmp_path_factory.mktemp("spans_out"))
  # Span 2 is span 1's photos mirrored (a re-export): new files whose colour
  # statistics match, where spans of ~100 other images would differ by
  # sampling alone (models/schema.py: the thresholds suit larger spans).
  _write_span(root, 1, images, labels)
  _write_span(root, 2, images[:, :, ::-1], labels)
  done = {1: _run(root, output, "--span", "1")}
  done[2] = _run(root, output)
  for step in (1, 2):
    assert done[step].returncode == 0, (step, done[step].log[-5000:])
  versions_after_2 = _versions(done[2].config)
  done[3] = _run(root, output)
  done["versions_after_3"] = _versions(done[3].config)
  _write_span(root, 3, images, labels, classes=(0, 8))  # no cat
  done[4] = _run(root, output)
  done["versions_after_4"] = _versions(done[4].config)
  done[5] = _run(root, output, *STEP_5_FLAGS)
  versions_after_5 = _versions(done[5].config)
  # A span-1 image the served index holds (train split), and an unknown id.
  served = _served(done[5].config, versions_after_5[-1]).index
  removed_id = sorted(i for i in served.records.ids if i.startswith("span-1/"))[0]
  with open(os.path.join(root, names.REMOVED_FILE), "w") as f:
    f.write(f"# taken down on request\n{removed_id}\n{UNKNOWN_ID}\n")
  done[6] = _run(root, output, *STEP_5_FLAGS)
  for step in (1, 2, 3, 5, 6):
    assert done[step].returncode == 0, (step, done[step].log[-5000:])
  done["versions_after_2"] = versions_after_2
  done["versions_after_5"] = versions_after_5
  done["root"] = root
  done["removed_id"] = removed_id
  return done


# A wider encoder, drift warned, the MAE on the newest span, a gate nobody passes.
STEP_5_FLAGS = (
    "--min-accuracy",
    "1.01",
    "--overrides",
    json.dumps(
        {
            "model": {"embed_dim": 48},
            "validation": {"on_drift": "warn"},
            "pretrain": {"span_window": 1},
        }
    ),
)
UNKNOWN_ID = "span-9/not/there.png"


def _served(config, version):
  """The pushed version's model and search index (serving.model_store)."""
  from serving.model_store import LoadedModel

  return LoadedModel(version, os.path.join(config.serving_model_dir, str(version)))


def _summary(run, trainer=names.MAE_TRAINER):
  with open(os.path.join(run.nodes[trainer]["outputs"]["ModelRun"][0], names.SUMMARY_FILE)) as f:
    return json.load(f)


def _span(run):
  return run.nodes["ImageFolderExampleGen"]["output_properties"]["Examples"][0]["span"]


def test_a_given_span_is_ingested_from_scratch(span_runs):
  first = span_runs[1]
  assert _span(first) == 1
  assert "(image_folder, span 1)" in first.log
  assert _summary(first)["warm_start"] == {
      "source": None,
      "reason": "no blessed model trained on an earlier span",
  }
  assert "[mae_pretrain] from scratch: no blessed model trained on an earlier span" in first.log


def test_the_newest_span_is_compared_with_the_last_and_warm_started(span_runs):
  first, second = span_runs[1], span_runs[2]
  assert _span(second) == 2
  # The gate compared span 2's train split with span 1's, each comparator named.
  assert re.search(
      r"\[AnomaliesGate\] span 2's train split vs span 1's \(the served "
      r"model's data\):\n"
      r"  class_name: L-infinity 0\.\d{4} \(threshold 0\.1\)",
      second.log,
  ), second.log
  assert re.search(r"  mean_red: Jensen-Shannon 0\.\d{4} \(threshold 0\.05\)", second.log)
  # Warm-started from the MAE span 1's blessed model carries, for fewer epochs.
  first_probe = first.nodes[names.PROBE_TRAINER]["outputs"]["Model"][0]
  warm = _summary(second)["warm_start"]
  assert warm["source"] == names.carried_mae_dir(os.path.join(first_probe, "Format-Serving")), warm
  assert len(_summary(second)["history"]) == 1  # smoke: warm_start_epochs 1 of 2
  # The MAE and the probe read spans 1 and 2 (span_window 0: every span the
  # gate passed; span 2 is span 1's photos mirrored, as many).
  first_count = _summary(first)["train_examples"]
  assert _summary(second)["train_examples"] == 2 * first_count
  assert _summary(second, names.PROBE_TRAINER)["train_examples"] == 2 * first_count
  assert "[mae_pretrain] warm start from the MAE of the latest blessed model" in second.log
  # The Evaluator's baseline is span 1's model, scored on span 2's test split.
  second_probe = second.nodes[names.PROBE_TRAINER]["outputs"]["Model"][0]
  assert sorted(second.nodes["Evaluator"]["inputs"]["Model"]) == sorted([first_probe, second_probe])
  report = local_runner.report.format_report(
      second.config.metadata_path, second.config.pipeline_name
  )
  assert "Against the model blessed before it, on the same test examples" in report
  assert re.search(r"per class: airplane: \d\.\d{3} \(\d\.\d{3}\)", report), report
  assert len(span_runs["versions_after_2"]) == 2  # one pushed by each run


def test_a_run_with_nothing_new_comes_from_the_cache(span_runs):
  again = span_runs[3]
  costly = {
      "ImageFolderExampleGen",
      "StatisticsGen",
      "Transform",
      names.MAE_TRAINER,
      names.PROBE_TRAINER,
      "Evaluator",
      "CorpusEmbedder",
      "SearchIndexer",
      "Pusher",
  }
  states = {n: again.nodes[n]["state"] for n in costly}
  assert states == {n: "CACHED" for n in costly}, states
  assert "mae_pretrain: done, from the cache" in again.log
  assert "Nothing new: the data and settings of an earlier run" in again.log
  assert span_runs["versions_after_3"] == span_runs["versions_after_2"]


def test_a_span_missing_a_class_is_stopped_naming_it(span_runs):
  stopped = span_runs[4]
  assert stopped.returncode != 0
  assert re.search(
      r"span 3 vs span 2, feature 'class_name': classes in span 2 missing "
      r"from span 3: \['cat'\]",
      stopped.log,
  ), stopped.log[-3000:]
  assert _span(stopped) == 3
  assert stopped.nodes["AnomaliesGate"]["state"] == "FAILED"
  assert "Transform" not in stopped.nodes and names.MAE_TRAINER not in stopped.nodes
  assert span_runs["versions_after_4"] == span_runs["versions_after_2"]


def test_another_architecture_trains_from_scratch_and_an_unblessed_span_pushes_nothing(span_runs):
  last = span_runs[5]
  warm = _summary(last)["warm_start"]
  assert warm["source"] is None and "model.embed_dim 32 (now 48)" in warm["reason"], warm
  assert "[mae_pretrain] from scratch: the blessed model's MAE" in last.log
  # Span 3 against span 2 (the served model's data) drifted: with
  # on_drift=warn the run went on, saying what moved.
  assert re.search(r"drift \(on_drift=warn, the run goes on\):\n.*span 3 vs span 2", last.log)
  # A window: the MAE read span 3 alone (pretrain.span_window 1), the probe
  # spans 1 to 3 (probe.span_window 0).
  span_3 = _summary(last)["train_examples"]
  probe = _summary(last, names.PROBE_TRAINER)["train_examples"]
  assert 0 < span_3 < _summary(span_runs[1])["train_examples"]  # two classes of three
  assert probe == 2 * _summary(span_runs[1])["train_examples"] + span_3
  assert "Pusher: nothing pushed" not in last.log


def test_two_blessed_spans_are_searched_together(span_runs):
  second = span_runs[2]
  config = second.config
  v1, v2 = span_runs["versions_after_2"]
  index_1, index_2 = _served(config, v1).index, _served(config, v2).index
  ids_1, ids_2 = set(index_1.records.ids), set(index_2.records.ids)
  # Span 1's model indexed span 1; span 2's model re-embedded spans 1 and 2
  # (every span the gate passed), each image once, its span named.
  assert ids_1 and all(i.startswith("span-1/") for i in ids_1)
  assert ids_1 < ids_2 and len(ids_2) == len(set(index_2.records.ids)) == len(index_2)
  assert {i.split("/")[0] for i in ids_2} == {"span-1", "span-2"}
  assert set(index_2.records.spans) == {"1", "2"}
  assert len(ids_2) == _summary(second, names.PROBE_TRAINER)["train_examples"]
  assert "CorpusEmbedder: the new model, blessed: the whole corpus embedded by it" in second.log
  # A span-1 image, queried as bytes through span 2's version, finds itself first.
  model = _served(config, v2)
  image_id = sorted(i for i in ids_2 if i.startswith("span-1/"))[0]
  with open(os.path.join(span_runs["root"], image_id), "rb") as f:
    query = model.run(names.SERVING_DEFAULT, [f.read()])["embedding"]
  hits = model.index.search(query, k=3)[0]
  assert hits[0]["id"] == image_id and hits[0]["span"] == "1" and hits[0]["score"] > 0.999, hits


def test_an_unblessed_span_is_added_to_the_served_models_index(span_runs):
  last = span_runs[5]
  config = last.config
  before, after = span_runs["versions_after_2"], span_runs["versions_after_5"]
  assert after[:-1] == before  # one new version
  served, extended = before[-1], after[-1]
  old, new = (os.path.join(config.serving_model_dir, str(v)) for v in (served, extended))
  # The served SavedModel, unchanged and hard-linked; the index extended.
  with (
      open(os.path.join(old, "fingerprint.pb"), "rb") as a,
      open(os.path.join(new, "fingerprint.pb"), "rb") as b,
  ):
    assert a.read() == b.read()
  assert os.path.samefile(os.path.join(old, "saved_model.pb"), os.path.join(new, "saved_model.pb"))
  old_model, new_model = _served(config, served), _served(config, extended)
  old_index, new_index = old_model.index, new_model.index
  span_3 = {i for i in new_index.records.ids if i.startswith("span-3/")}
  assert set(new_index.records.ids) == set(old_index.records.ids) | span_3 and span_3
  assert len(new_index) == len(set(new_index.records.ids))
  # Earlier vectors reused as they were, span 3's embedded by the served model.
  rows = new_index.rows_of(list(old_index.records.ids))
  np.testing.assert_allclose(
      np.asarray(new_index.vectors[rows], np.float32),
      np.asarray(old_index.vectors, np.float32),
      atol=1e-3,
  )
  # Their thumbnails kept with them (the served store's, through reused.npz);
  # span 3's made from its files.
  reused = old_model.thumbnails.select(range(len(old_index)))
  assert all(reused) and new_model.thumbnails.select(rows) == reused
  for image_id in sorted(span_3)[:5]:
    with Image.open(os.path.join(span_runs["root"], image_id)) as original:
      expected = np.asarray(original.convert("RGB"), int)
    (row,) = new_index.rows_of([image_id])
    with Image.open(io.BytesIO(new_model.thumbnails[row])) as thumbnail:
      assert np.abs(np.asarray(thumbnail, int) - expected).mean() < 12, image_id
  assert re.search(
      rf"CorpusEmbedder: the model was not blessed: the served version {served} kept; "
      rf"{len(span_3)} vectors added, {len(old_index)} reused, 0 removed",
      last.log,
  ), last.log[-3000:]
  assert f"Pusher: pushed version {extended}" in last.log and "(index-only)" in last.log


def test_a_removed_image_leaves_search_for_good(span_runs):
  removal = span_runs[6]
  config = removal.config
  versions = _versions(config)
  assert versions[:-1] == span_runs["versions_after_5"]  # one new version
  for node in (names.MAE_TRAINER, names.PROBE_TRAINER, "Evaluator"):
    assert removal.nodes[node]["state"] == "CACHED", node
  removed_id = span_runs["removed_id"]
  previous_model, newest_model = (_served(config, v) for v in versions[-2:])
  previous, newest = previous_model.index, newest_model.index
  assert removed_id in previous.records.ids and removed_id not in newest.records.ids
  assert set(newest.records.ids) == set(previous.records.ids) - {removed_id}
  # Every image kept keeps its thumbnail.
  kept = list(newest.records.ids)
  assert newest_model.thumbnails.select(newest.rows_of(kept)) == (
      previous_model.thumbnails.select(previous.rows_of(kept))
  )
  # Kept with the index, so later spans leave them out too.
  assert newest.removed == sorted([removed_id, UNKNOWN_ID])
  assert f"1 removed id(s) not in the corpus, ignored: {UNKNOWN_ID}" in removal.log
  assert re.search(r"0 vectors added, \d+ reused, 1 removed", removal.log), removal.log[-3000:]
