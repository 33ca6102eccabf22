"""The real DAG (BeamDagRunner, SQLite MLMD, TFMA) on a few hundred real images.

One smoke run is shared by the checks below; later tests re-run the same
pipeline (cache), with a gate nobody passes, and on broken inputs.
"""

import glob
import re
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from models import names
from models.names import CLASSIFY_EXAMPLES, SERVING_DEFAULT
from pipeline import configs, local_runner, report, run_outputs, runs
from tests.conftest import cifar10_class_names, png_bytes, served_versions, write_cifar_dir

# Runs the pipeline: `make test-fast` leaves this module out.
pytestmark = pytest.mark.pipeline

RESOLVERS = {
    "previous_statistics_resolver",
    "warm_start_model_resolver",
    "latest_blessed_model_resolver",
}
ALL_NODES = {
    "Cifar10ExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "AnomaliesGate",
    "Transform",
    "mae_pretrain",
    "linear_probe",
    "Evaluator",
    "CorpusEmbedder",
    "SearchIndexer",
    "Pusher",
    *RESOLVERS,
}
TRAINING_NODES = {"Transform", "mae_pretrain", "linear_probe", "Evaluator", "Pusher"}


def _config(data_root, output_dir, **kwargs):
  return configs.PipelineConfig(
      data_root=data_root, output_dir=str(output_dir), profile="smoke", **kwargs
  )


def _states(config):
  return {
      r["node"]: r["state"]
      for r in runs.last_run_executions(config.metadata_path, config.pipeline_name)
  }


def test_every_component_executes(smoke_run):
  states = _states(smoke_run)
  assert set(states) == ALL_NODES
  assert all(s == "COMPLETE" for s in states.values()), states


def test_the_pushed_version_has_a_thumbnail_of_each_corpus_image(smoke_run):
  """search.thumbnail_px (64 in the smoke profile too): a JPEG a record, row
  for row, of the image its id names at that image's size (CIFAR-10's 32 px
  are not enlarged), within the size docs/serving.md states."""
  import io

  from PIL import Image

  from models import search_index, thumbnails

  assert smoke_run.run_config.search.thumbnail_px == 64
  version = served_versions(smoke_run)[-1]
  index_dir = os.path.join(smoke_run.serving_model_dir, version, names.SEARCH_INDEX_DIR)
  ids = search_index.read_records(index_dir).ids
  store = thumbnails.ThumbnailStore.load(index_dir)
  assert store is not None and len(store) == len(ids) == 320
  run = run_outputs.RunOutputs.load(smoke_run.output_dir)
  images = run.search_corpus_images()
  for row, image_id in enumerate(ids):
    original = np.asarray(Image.open(io.BytesIO(images[image_id])).convert("RGB"), int)
    with Image.open(io.BytesIO(store[row])) as jpeg:
      assert jpeg.format == "JPEG"
      small = np.asarray(jpeg, int)
    assert small.shape == original.shape == (32, 32, 3), image_id
    assert np.abs(small - original).mean() < 12, image_id  # the same picture, JPEG q85
  # About 1 KB an image (docs/serving.md: ~50 MB per 50,000), as the
  # SearchIndexer reported it.
  assert 500 * len(ids) < store.size_bytes < 1500 * len(ids)
  indexer = run.node("SearchIndexer")["output_properties"][names.SEARCH_INDEX_TYPE][0]
  assert indexer[names.THUMBNAIL_BYTES_PROPERTY] == store.size_bytes
  assert f"thumbnails {store.size_bytes / 1e6:.2f} MB" in report.format_report(
      smoke_run.metadata_path, smoke_run.pipeline_name
  )


@pytest.mark.server
def test_the_pushed_version_answers_neighbors_from_its_own_index(smoke_run, cifar10_sample):
  """`make pipeline` then `make serve`: :neighbors needs no other command; a
  train image finds itself first. The index covers the train split, ids
  numbered as `serving.embed --examples` numbers them, and says what it is."""
  import base64
  import requests
  from models import search_index
  from serving.launch import ServerProcess

  version = served_versions(smoke_run)[-1]
  index = search_index.load(
      os.path.join(smoke_run.serving_model_dir, version, names.SEARCH_INDEX_DIR)
  )
  (train, train_labels), _ = cifar10_sample
  assert len(index) == len(train) and index.kind == "exact"
  assert index.info["evaluation"]["recall_at_k"] == 1.0 and index.info["corpus_splits"] == ["train"]
  examples, _ = runs.pipeline_inputs(smoke_run.metadata_path)
  from models.examples import read_examples

  found = read_examples(names.split_files(examples, "train"))
  position = {image: i for i, image in enumerate(found.images)}
  with ServerProcess(["--model-dir", smoke_run.serving_model_dir]) as server:
    queries = [png_bytes(train[i]) for i in (4, 200)]
    r = requests.post(
        f"{server.url}/v1/models/{names.PIPELINE_NAME}:neighbors",
        json={"instances": [{"b64": base64.b64encode(q).decode()} for q in queries], "k": 3},
        timeout=60,
    )
  assert r.status_code == 200, r.text
  body = r.json()
  assert body["model_version"] == version
  names_ = cifar10_class_names()
  for hits, i, query in zip(body["neighbors"], (4, 200), queries):
    assert hits[0]["score"] >= 0.999 and hits[0]["class_name"] == names_[train_labels[i]]
    assert hits[0]["id"] == f"train/{position[query]}"
  text = report.format_report(smoke_run.metadata_path, smoke_run.pipeline_name)
  assert "Search index: blessed: exact index of 320 x" in text


def test_blessed_model_is_pushed_and_embeds_png(smoke_run, cifar10_sample):
  versions = served_versions(smoke_run)
  assert len(versions) == 1
  path = os.path.join(smoke_run.serving_model_dir, versions[0])
  assert os.path.isfile(os.path.join(path, "saved_model.pb"))
  _, (test_images, _) = cifar10_sample
  loaded = tf.saved_model.load(path)
  emb = loaded.signatures[SERVING_DEFAULT](
      image_bytes=tf.constant([png_bytes(i) for i in test_images[:5]])
  )["embedding"]
  dim = smoke_run.run_config.embedding_dim
  assert emb.shape == (5, dim) and np.isfinite(emb.numpy()).all()
  assert np.linalg.norm(emb.numpy()[0] - emb.numpy()[1]) > 0


def test_tfma_accuracy_matches_the_pushed_model(smoke_run, cifar10_sample):
  rows = {
      r["node"]: r
      for r in runs.last_run_executions(smoke_run.metadata_path, smoke_run.pipeline_name)
  }
  accuracies = run_outputs.tfma_accuracy(rows["Evaluator"]["outputs"]["ModelEvaluation"][0])
  assert set(accuracies) == {names.PROBABILITIES_KEY, names.KNN_PROBABILITIES_KEY}
  for accuracy in accuracies.values():
    assert set(accuracy) == {"overall"} | {f"class_name={c}" for c in cifar10_class_names()}
  # Recompute both accuracies with the pushed model on the same test split.
  _, (test_images, test_labels) = cifar10_sample
  path = os.path.join(smoke_run.serving_model_dir, served_versions(smoke_run)[0])
  examples = [
      tf.train.Example(
          features=tf.train.Features(
              feature={
                  "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(i)]))
              }
          )
      ).SerializeToString()
      for i in test_images
  ]
  outputs = tf.saved_model.load(path).signatures[CLASSIFY_EXAMPLES](examples=tf.constant(examples))
  for output in (names.PROBABILITIES_KEY, names.KNN_PROBABILITIES_KEY):
    ours = float((outputs[output].numpy().argmax(1) == test_labels).mean())
    assert abs(accuracies[output]["overall"] - ours) < 1e-6, output
  # The k-NN TFMA scores is the probe Trainer's k-NN (k = 20, the same bank).
  with open(os.path.join(rows["linear_probe"]["outputs"]["ModelRun"][0], names.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert summary["knn_accuracy"] == pytest.approx(
      accuracies[names.KNN_PROBABILITIES_KEY]["overall"]
  )
  assert os.path.exists(os.path.join(rows["Evaluator"]["outputs"]["ModelBlessing"][0], "BLESSED"))


def test_trainers_log_progress_and_tensorboard(smoke_run):
  rows = {
      r["node"]: r
      for r in runs.last_run_executions(smoke_run.metadata_path, smoke_run.pipeline_name)
  }
  run_dir = rows["mae_pretrain"]["outputs"]["ModelRun"][0]
  assert glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)
  assert glob.glob(os.path.join(run_dir, "reconstructions", "events.out.tfevents.*"))
  grid = tf.io.decode_png(tf.io.read_file(os.path.join(run_dir, "reconstructions.png")))
  assert grid.shape == (3 * (3 * 32 + 4), 3 * (8 * 32 + 7 * 2), 3)  # 3 rows of 8, x3
  text = report.format_report(smoke_run.metadata_path, smoke_run.pipeline_name)
  assert "img/s" in text and "Linear probe test accuracy (TFMA)" in text


def _text_outputs(nb) -> str:
  return "".join(
      o.get("text", "") + "".join(v for v in o.get("data", {}).values() if isinstance(v, str))
      for c in nb.cells
      if c.cell_type == "code"
      for o in c.get("outputs", [])
  )


@pytest.fixture(scope="module")
def report_page(smoke_run, tmp_path_factory):
  """Every notebook run on the smoke run, once for the checks of the page and
  of the notebooks: (the path of `make report`'s page, {notebook name:
  executed notebook}). The walkthrough is the one the report executed and
  wrote beside its page; the others are executed here. A push killed
  mid-copy leaves a staging folder; the notebooks skip it."""
  import nbformat

  from pipeline import notebooks

  staging = os.path.join(smoke_run.serving_model_dir, ".staging-9999999999-1")
  os.makedirs(staging)
  try:  # a failing cell raises CellExecutionError
    page = report.write_html(
        smoke_run.output_dir, str(tmp_path_factory.mktemp("report") / "report.html")
    )
    executed = {
        name: notebooks.execute(name, smoke_run.output_dir)
        for name in notebooks.NOTEBOOKS
        if name != notebooks.WALKTHROUGH
    }
  finally:
    shutil.rmtree(staging)
  executed[notebooks.WALKTHROUGH] = nbformat.read(
      os.path.splitext(page)[0] + ".ipynb", as_version=4
  )
  return page, executed


def test_notebooks_run_on_the_pipeline_outputs(smoke_run, report_page):
  from pipeline import notebooks

  _, executed = report_page
  assert set(executed) == set(notebooks.NOTEBOOKS)
  walkthrough = executed["pipeline_walkthrough.ipynb"]
  pictures = [
      o for c in walkthrough.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
  ]
  assert len(pictures) == 13  # every figures.* call made its picture
  text = _text_outputs(walkthrough)
  assert "application/vnd.jupyter.widget-view+json" in str(walkthrough.cells)  # tfma.view
  assert "facets-overview" in text
  assert all(name in text for name in cifar10_class_names())  # the schema's domain
  assert "split train: 0 anomalies" in text
  assert re.search(r"exact index of 320 x \d+ .*recall@10 1\.0000", text), text
  assert re.search(
      r"\d+ of 100 test images have a train image at cosine similarity >= 0\.\d{3} through "
      r"the duplicate projection",
      text,
  ), text
  assert "kNN (k=20, cosine) top-1 on 100 test images with 320 train images" in _text_outputs(
      executed["explore_embeddings.ipynb"]
  )
  for nb in executed.values():  # what a committed notebook may show
    assert smoke_run.output_dir not in _text_outputs(nb)
    assert names.PROJECT_DIR not in _text_outputs(nb)


def test_report_writes_the_walkthrough_as_a_static_page(smoke_run, report_page):
  path, _ = report_page
  with open(path) as f:
    page = f.read()
  for title in (
      "The DAG",
      "The data",
      "The schema and the anomaly gate",
      "Transform",
      "Training",
      "Evaluation (TFMA)",
      "k-NN, and the random-init baseline",
      "The embedding space",
      "Search: the index pushed with the model",
      "Near-duplicates: CIFAR-10 test images in train",
      "most confident mistakes",
  ):
    assert f">{title}" in page or title in page
  assert page.count('src="data:image/png;base64,') == 13
  assert "from pipeline import" not in page  # the code is left out
  assert "&lt;output&gt;/serving_model/" in page and smoke_run.output_dir not in page
  folder = os.path.dirname(path)
  assert sorted(os.listdir(folder)) == ["report.html", "report.ipynb", "report_figures"]
  assert sorted(os.listdir(os.path.join(folder, "report_figures"))) == sorted(
      f"{name}.png"
      for name in (
          "dag",
          "timeline",
          "class_counts",
          "channel_statistics",
          "training_curves",
          "reconstructions",
          "accuracy_by_class",
          "confusion_matrix",
          "probe_accuracies",
          "embedding_map",
          "search_results",
          "near_duplicates",
          "confident_mistakes",
      )
  )


def test_transform_froze_the_train_pixels_mean_and_std(smoke_run, cifar10_sample):
  from pipeline.run_outputs import RunOutputs

  (train_images, _), _ = cifar10_sample
  mean, std = RunOutputs.load(smoke_run.output_dir).channel_statistics()
  pixels = train_images.reshape(-1, 3) / 255.0
  # tf.Transform's analysers sum in float32: 1e-4 is 1/40 of a grey level.
  np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-4)
  np.testing.assert_allclose(std, pixels.std(0), atol=1e-4)


def _assert_stopped_before_training(config):
  states = _states(config)
  assert not TRAINING_NODES & {n for n, s in states.items() if s in ("COMPLETE", "CACHED")}, states


def test_label_out_of_range_stops_the_pipeline_before_transform(tmp_path, cifar10_sample):
  (train, train_labels), test = cifar10_sample
  bad_labels = train_labels.copy()
  bad_labels[7] = 12
  root = write_cifar_dir(str(tmp_path / "data" / "cifar-10-batches-py"), (train, bad_labels), test)
  config = _config(root, tmp_path / "out")
  with pytest.raises(
      Exception,
      match=r"split 'train', feature 'label': INT_TYPE_BIG_INT: Unexpectedly large value: 12",
  ):
    local_runner.run(config)
  _assert_stopped_before_training(config)
  assert _states(config)["AnomaliesGate"] == "FAILED"
  assert served_versions(config) == []


def test_truncated_batch_file_stops_the_pipeline_in_example_gen(tmp_path, small_cifar_dir):
  root = str(tmp_path / "cifar-10-batches-py")
  shutil.copytree(small_cifar_dir, root)
  with open(os.path.join(root, "data_batch_2"), "r+b") as f:
    f.truncate(1000)
  config = _config(root, tmp_path / "out")
  with pytest.raises(Exception, match=r"data_batch_2: not a readable CIFAR-10 batch"):
    local_runner.run(config)
  assert _states(config)["Cifar10ExampleGen"] == "FAILED"
  _assert_stopped_before_training(config)


@pytest.mark.slow
def test_beam_stages_in_two_worker_processes_equal_the_in_process_run(smoke_run, tmp_path):
  """The DirectRunner in multi-process mode (2 workers), as a bigger machine
  or Dataflow would spread the data stages: ExampleGen's examples (their
  pixels and labels; the PNG bytes may differ, as the worker processes can
  load another zlib), StatisticsGen's counts and Transform's statistics
  equal the in-process run's."""
  import io
  from PIL import Image
  from pipeline.run_outputs import RunOutputs

  def content(records):
    return sorted(
        (int(label), np.asarray(Image.open(io.BytesIO(image))).tobytes())
        for image, label in zip(records.images, records.labels)
    )

  config = _config(
      smoke_run.data_root,
      tmp_path / "multi",
      overrides={
          "beam": {
              "pipeline_args": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
          }
      },
  )
  local_runner.run(config)
  assert set(_states(config).values()) == {"COMPLETE"}
  one, two = RunOutputs.load(smoke_run.output_dir), RunOutputs.load(config.output_dir)
  for split in (names.TRAIN_SPLIT, names.TEST_SPLIT):
    assert content(one.examples(split)) == content(two.examples(split))
    counts = [
        {
            f.path.step[0]: [
                (b.label, b.sample_count) for b in f.string_stats.rank_histogram.buckets
            ]
            for f in run.statistics(split).datasets[0].features
            if f.path.step[0] != names.IMAGE_KEY
        }
        for run in (one, two)
    ]
    assert counts[0] == counts[1]
    assert (
        one.statistics(split).datasets[0].num_examples
        == two.statistics(split).datasets[0].num_examples
    )
  # Two workers' float32 partial sums combine in another order: 1/40 of a grey level.
  for a, b in zip(one.channel_statistics(), two.channel_statistics()):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_a_run_killed_at_each_step_completes_when_run_again(cifar10_dir, tmp_path):
  """The kill matrix (benchmarks/kill_matrix.py): SIGKILL at each step, the
  same command again."""
  from benchmarks import kill_matrix

  rows = {
      r["point"]: r
      for r in kill_matrix.run_matrix(cifar10_dir, list(kill_matrix.POINTS), str(tmp_path))
  }
  assert set(rows) == set(kill_matrix.POINTS)
  for point, row in rows.items():
    killed, rerun = list(row["states"].values())[0], list(row["states"].values())[-1]
    assert row["rerun_status"] == 0, (point, row.get("error"))
    assert len(row["versions"]) == 1 and not row["staging"], point
    assert "FAILED" in killed.values(), (point, killed)
    assert set(rerun.values()) <= {"COMPLETE", "CACHED"}, (point, rerun)
    # Two uninterrupted runs differ by about 1e-5 (multi-threaded float sums).
    assert row["max_weight_difference"] < 1e-4, point
  assert rows["mae_epoch"]["resumed_from_epoch"] == 2
  assert rows["mae_checkpoint_write"]["resumed_from_epoch"] == 1
  assert rows["mae_checkpoint_write"]["unreadable"]
