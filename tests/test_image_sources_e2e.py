"""Your own images through the real DAG (BeamDagRunner, SQLite MLMD, TFMA):
a folder of real photos-like files of several sizes and formats with a
corrupt one, an unlabeled folder, TFRecords (at a smaller image size,
indexing a search corpus), and the gate on bad layouts."""

import json
import os
import re
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from models import image_files, names, schema
from models.names import CLASSIFY_EXAMPLES, SERVING_DEFAULT
from pipeline import configs, local_runner, report, run_outputs, runs
from tests.conftest import (
    IMAGE_FOLDER_CLASSES,
    cifar10_class_names,
    jpeg_bytes,
    png_bytes,
    save_image,
    served_versions,
    write_image_files,
)

# Runs the pipeline: `make test-fast` leaves this module out.
pytestmark = pytest.mark.pipeline


def _run(*flags, output):
  return local_runner.main(["--profile", "smoke", "--output-dir", str(output), *flags])


def _rows(config):
  return runs.last_run_nodes(config.metadata_path, config.pipeline_name)


def _states(config):
  return {n: r["state"] for n, r in _rows(config).items()}


def _summary(config, node):
  with open(os.path.join(_rows(config)[node]["outputs"]["ModelRun"][0], names.SUMMARY_FILE)) as f:
    return json.load(f)


def _pushed(config):
  return os.path.join(config.serving_model_dir, served_versions(config)[-1])


def _example(image_bytes):
  return tf.train.Example(
      features=tf.train.Features(
          feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
      )
  ).SerializeToString()


@pytest.fixture(scope="module")
def folder_run(photo_folder, tmp_path_factory):
  """The smoke DAG on the image folder with its unlabeled folder, skipping the
  corrupt file, as a user runs it (`make pipeline DATA=... UNLABELED=...`)."""
  out = tmp_path_factory.mktemp("folder_run")
  return _run(*_folder_flags(photo_folder, out / "schema" / "schema.pbtxt"), output=out / "out")


def _folder_flags(photo_folder, schema_path):
  """The image folder, its unlabeled folder, the corrupt file skipped."""
  root, unlabeled = photo_folder
  return [
      "--data",
      root,
      "--unlabeled",
      unlabeled,
      "--skip-bad-images",
      "--schema",
      str(schema_path),
  ]


def test_image_folder_trains_blesses_and_pushes(folder_run, photo_folder):
  # Its own pipeline: its runs, blessed models and served versions apart from CIFAR-10's.
  assert folder_run.pipeline_name == "mae-tfx-photos"
  assert folder_run.serving_model_dir.endswith(os.path.join("serving_model", "mae-tfx-photos"))
  states = _states(folder_run)
  assert "ImageFolderExampleGen" in states
  assert all(s == "COMPLETE" for s in states.values()), states
  root, _ = photo_folder
  layout = image_files.detect_layout(root)
  # The schema was generated once, for review, from the folder's classes.
  assert schema.class_names(schema.read_schema(folder_run.schema_path)) == layout.class_names
  text = report.format_report(folder_run.metadata_path, folder_run.pipeline_name)
  assert "Gate: blessed (test accuracy: linear probe" in text and "per class: airplane:" in text
  assert "1 bad image file(s) skipped" in text


def test_the_corrupt_file_is_skipped_counted_and_listed(folder_run):
  gen = _rows(folder_run)["ImageFolderExampleGen"]
  assert gen["output_properties"]["Examples"][0]["bad_images"] == 1
  assert json.loads(gen["output_properties"]["Examples"][0]["class_names"]) == [
      "airplane",
      "cat",
      "ship",
  ]
  with open(os.path.join(gen["outputs"]["Examples"][0], names.BAD_IMAGES_FILE)) as f:
    lines = f.read().splitlines()
  assert len(lines) == 1 and "/cat/broken.jpg: not a readable image" in lines[0]


def test_unlabeled_images_reach_pretraining_only(folder_run, photo_folder):
  root, _ = photo_folder
  layout = image_files.detect_layout(root)
  train = len(layout.files["train"]) - sum(
      rel.endswith("broken.jpg") for rel, _ in layout.files["train"]
  )
  assert _summary(folder_run, "mae_pretrain")["train_examples"] == train + 64
  probe = _summary(folder_run, "linear_probe")
  assert probe["train_examples"] == train and probe["classes"] == 3
  examples = _rows(folder_run)["ImageFolderExampleGen"]["outputs"]["Examples"][0]
  assert set(os.listdir(examples)) == {
      names.BAD_IMAGES_FILE,
      "Split-test",
      "Split-train",
      "Split-unlabeled",
  }


def test_the_pushed_index_names_each_image_by_its_file(folder_run, photo_folder, tmp_path):
  """Search ids of an image folder are the files, relative to their root:
  the train split's (the bad file skipped) and the unlabeled folder's; and
  `serving.embed --examples` names the split's examples the same way."""
  from models import search_index

  root, unlabeled = photo_folder
  layout = image_files.detect_layout(root)
  index = search_index.load(os.path.join(_pushed(folder_run), names.SEARCH_INDEX_DIR))
  records = dict(zip(index.records.ids, index.records.class_names))
  train = {
      rel: layout.class_names[label]
      for rel, label in layout.files["train"]
      if not rel.endswith("broken.jpg")
  }
  expected = dict(
      train,
      **{f"unlabeled/{rel}": "" for rel in image_files.list_images(unlabeled, recursive=True)},
  )
  assert records == expected
  from serving import embed

  examples = _rows(folder_run)["ImageFolderExampleGen"]["outputs"]["Examples"][0]
  embedded = embed.main(
      [
          "--model-dir",
          _pushed(folder_run),
          "--examples",
          examples,
          "--split",
          "train",
          "--out",
          str(tmp_path / "train.npz"),
          "--no-progress",
      ]
  )
  assert sorted(embedded.ids) == sorted(train)


def test_pushed_model_embeds_any_image_and_names_classes(folder_run, cifar10_sample):
  path = _pushed(folder_run)
  with open(os.path.join(path, "assets", names.CLASS_NAMES_FILE)) as f:
    assert f.read().splitlines() == ["airplane", "cat", "ship"]
  model = tf.saved_model.load(path)
  (train, labels), _ = cifar10_sample
  images = [train[labels == c][0] for c in IMAGE_FOLDER_CLASSES]
  emb = model.signatures[SERVING_DEFAULT](
      image_bytes=tf.constant([png_bytes(images[0]), jpeg_bytes(images[1], size=(120, 90))])
  )["embedding"]
  assert emb.shape == (2, folder_run.run_config.embedding_dim)
  out = model.signatures[CLASSIFY_EXAMPLES](
      examples=tf.constant([_example(png_bytes(i)) for i in images])
  )
  probs, classes = out["probabilities"].numpy(), out["class_name"].numpy()
  assert probs.shape == (3, 3)
  names_ = np.array(["airplane", "cat", "ship"])
  assert [c.decode() for c in classes] == list(names_[probs.argmax(1)])


def test_tfma_slices_by_class_name(folder_run):
  rows = _rows(folder_run)
  accuracies = run_outputs.tfma_accuracy(rows["Evaluator"]["outputs"]["ModelEvaluation"][0])
  for output in (names.PROBABILITIES_KEY, names.KNN_PROBABILITIES_KEY):
    assert set(accuracies[output]) == (
        {"overall"} | {f"class_name={c}" for c in ("airplane", "cat", "ship")}
    )


def test_rerun_is_served_from_cache(folder_run):
  local_runner.run(folder_run)
  states = _states(folder_run)
  assert states["ImageFolderExampleGen"] == "CACHED" and states["mae_pretrain"] == "CACHED"


# The two checks below run the pipeline again on a run's outputs, so they
# work on this module's own run, not on the smoke run that other modules
# read at the same time (tests/conftest.py: `smoke_run`).


def test_second_run_is_served_from_cache(folder_run, capsys):
  before = served_versions(folder_run)
  local_runner.run(folder_run)
  log = capsys.readouterr().err
  assert re.search(r"^\d\d:\d\d:\d\d Transform: done, from the cache \(", log, re.M), log
  states = _states(folder_run)
  # The resolvers resolve what they did in the first run (the baseline: the
  # model blessed before the candidate, none), so every step's inputs are
  # unchanged; only the gate runs again, now holding the first run's
  # statistics as the blessed model's data (the same: nothing compared).
  resolvers = {n for n in states if n.endswith("_resolver")}
  assert resolvers and all(
      states[n] == "CACHED" for n in set(states) - resolvers - {"AnomaliesGate"}
  ), states
  assert "Nothing new: the data and settings of an earlier run" in log
  assert served_versions(folder_run) == before


def test_unblessed_model_is_not_pushed_and_nothing_is_overwritten(folder_run, photo_folder, capsys):
  before = {
      v: os.path.getmtime(os.path.join(folder_run.serving_model_dir, v, "saved_model.pb"))
      for v in served_versions(folder_run)
  }
  strict = _run(
      *_folder_flags(photo_folder, folder_run.schema_path),
      "--min-accuracy",
      "1.01",
      output=folder_run.output_dir,
  )
  log = capsys.readouterr().err
  assert re.search(
      r"Evaluator: NOT blessed: linear probe accuracy 0\.\d{4} is below the floor "
      r"1\.01 \(test accuracy: linear probe 0\.\d{4}, 20-NN 0\.\d{4}\)$",
      log,
      re.M,
  ), log
  # The served version already searches every image: no index-only version.
  assert (
      "Pusher: nothing pushed (the model was not blessed, and the served version already "
      "searches every image accepted); the served versions are unchanged" in log
  ), log[-2000:]
  states = _states(strict)
  assert states["Evaluator"] == "COMPLETE" and states["mae_pretrain"] == "CACHED"
  rows = _rows(strict)
  assert os.path.exists(
      os.path.join(rows["Evaluator"]["outputs"]["ModelBlessing"][0], "NOT_BLESSED")
  )
  assert rows["Pusher"]["output_properties"]["PushedModel"][0]["pushed"] == 0
  after = {
      v: os.path.getmtime(os.path.join(strict.serving_model_dir, v, "saved_model.pb"))
      for v in served_versions(strict)
  }
  assert after == before


def test_a_bad_image_stops_the_run_naming_the_file(photo_folder, tmp_path):
  root, _ = photo_folder
  with pytest.raises(Exception, match=r"/cat/broken\.jpg: not a readable image"):
    _run("--data", root, "--schema", str(tmp_path / "schema.pbtxt"), output=tmp_path / "out")
  config_rows = runs.last_run_nodes(names.metadata_path(str(tmp_path / "out")))
  assert config_rows["ImageFolderExampleGen"]["state"] == "FAILED"
  assert "mae_pretrain" not in config_rows
  assert not os.path.exists(names.serving_model_dir(str(tmp_path / "out")))


def _write_records(path, items, image_key="img", label_key="y", gzip=False):
  with tf.io.TFRecordWriter(str(path), options="GZIP" if gzip else None) as w:
    for image, label in items:
      feature = {label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
      if image is not None:
        feature[image_key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
      w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


class RecordsRun(NamedTuple):
  config: configs.PipelineConfig
  train_examples: int  # records in the train files
  corpus: str  # the --search-corpus folder


@pytest.fixture(scope="module")
def records_run(cifar10_sample, tmp_path_factory):
  """The smoke DAG on TFRecords with feature names of their own (gzip and
  plain files, two classes), at data.image_size 16, indexing a folder of
  images it never trained on (`--search-corpus`, nested folders, one image
  at its root, a bad file skipped with --skip-bad-images): three settings a
  user sets one at a time, each checked by its own test on this one run."""
  (train, train_labels), (test, test_labels) = cifar10_sample
  folder = tmp_path_factory.mktemp("records_run")
  root = folder / "records"
  (root / "train").mkdir(parents=True)
  (root / "test").mkdir()
  keep = np.isin(train_labels, (1, 9))
  items = [
      (jpeg_bytes(i, size=(48, 48)), int(y == 9)) for i, y in zip(train[keep], train_labels[keep])
  ]
  _write_records(root / "train" / "part-0.tfrecord.gz", items[:40], gzip=True)
  _write_records(root / "train" / "part-1.tfrecord", items[40:])
  keep = np.isin(test_labels, (1, 9))
  _write_records(
      root / "test" / "part-0.tfrecord",
      [(png_bytes(i), int(y == 9)) for i, y in zip(test[keep], test_labels[keep])],
  )
  (root / "class_names.txt").write_text("automobile\ntruck\n")
  corpus = folder / "catalogue"
  write_image_files(str(corpus / "shoes"), train[:5], "s")
  write_image_files(str(corpus / "bags" / "2026"), train[5:9], "b")
  save_image(train[9], str(corpus / "loose.png"))
  (corpus / "shoes" / "broken.jpg").write_bytes(jpeg_bytes(train[0])[:200])
  config = _run(
      "--data",
      str(root),
      "--image-feature",
      "img",
      "--label-feature",
      "y",
      "--schema",
      str(folder / "schema.pbtxt"),
      "--search-corpus",
      str(corpus),
      "--skip-bad-images",
      "--overrides",
      '{"data": {"image_size": 16}}',
      output=folder / "out",
  )
  return RecordsRun(config, len(items), str(corpus))


def test_tfrecord_source_with_its_own_feature_names(records_run, cifar10_sample):
  config = records_run.config
  _, (test, _) = cifar10_sample
  states = _states(config)
  assert "TFRecordImageExampleGen" in states
  assert all(s == "COMPLETE" for s in states.values()), states
  assert _summary(config, "linear_probe")["train_examples"] == records_run.train_examples
  model = tf.saved_model.load(_pushed(config))
  out = model.signatures[CLASSIFY_EXAMPLES](examples=tf.constant([_example(png_bytes(test[0]))]))
  assert out["class_name"].numpy()[0].decode() in ("automobile", "truck")


def test_a_smaller_image_size_runs_end_to_end(records_run, cifar10_sample):
  """data.image_size 16: Transform resizes to it and the MAE, the probe, the
  reconstructions and the signatures follow; the served model still takes
  images of any size."""
  import tensorflow_transform as tft

  config = records_run.config
  states = _states(config)
  assert all(s == "COMPLETE" for s in states.values()), states
  rows = runs.last_run_nodes(config.metadata_path)
  graph = tft.TFTransformOutput(rows["Transform"]["outputs"]["TransformGraph"][0])
  assert graph.transformed_feature_spec()["image"].shape == [16, 16, 3]
  mae_dir = os.path.join(rows["mae_pretrain"]["outputs"]["Model"][0], "Format-Serving")
  with open(os.path.join(mae_dir, names.MAE_CONFIG_FILE)) as f:
    assert json.load(f)["image_size"] == 16
  grid = tf.io.decode_png(
      tf.io.read_file(
          os.path.join(rows["mae_pretrain"]["outputs"]["ModelRun"][0], names.RECONSTRUCTIONS_FILE)
      )
  )
  assert grid.shape == (3 * (3 * 16 + 4), 3 * (8 * 16 + 7 * 2), 3)
  _, (test_images, _) = cifar10_sample
  served = tf.saved_model.load(_pushed(config))
  emb = served.signatures[SERVING_DEFAULT](
      image_bytes=tf.constant(
          [png_bytes(test_images[0]), jpeg_bytes(test_images[1], size=(70, 50))]
      )
  )["embedding"]
  assert emb.shape == (2, config.run_config.embedding_dim)
  assert np.isfinite(emb.numpy()).all()


def _assert_stopped_at_the_gate(config_dir):
  rows = runs.last_run_nodes(names.metadata_path(str(config_dir)))
  assert rows["AnomaliesGate"]["state"] == "FAILED"
  assert "Transform" not in rows and "mae_pretrain" not in rows


def test_gate_stops_a_test_class_absent_from_train(tmp_path, cifar10_sample):
  (train, labels), _ = cifar10_sample
  names_ = cifar10_class_names()
  for split, classes in (("train", (0, 1)), ("test", (0, 1, 2))):
    for c in classes:
      for i, image in enumerate(train[labels == c][:12]):
        save_image(image, str(tmp_path / "data" / split / names_[c] / f"{i}.png"))
  with pytest.raises(
      Exception,
      match=r"split 'test', feature 'class_name': classes absent "
      r"from split 'train': \['bird'\]",
  ):
    _run(
        "--data",
        str(tmp_path / "data"),
        "--schema",
        str(tmp_path / "schema.pbtxt"),
        output=tmp_path / "out",
    )
  _assert_stopped_at_the_gate(tmp_path / "out")


def test_gate_stops_an_empty_split_and_a_missing_image_feature(tmp_path, cifar10_sample):
  (train, labels), _ = cifar10_sample
  root = tmp_path / "records"
  (root / "train").mkdir(parents=True)
  (root / "test").mkdir()
  # The train records carry their image under another name than --image-feature;
  # the test file holds no record.
  _write_records(
      root / "train" / "a.tfrecord",
      [(png_bytes(i), int(y)) for i, y in zip(train[:40], labels[:40])],
      image_key="picture",
  )
  _write_records(root / "test" / "a.tfrecord", [])
  with pytest.raises(Exception) as error:
    _run(
        "--data",
        str(root),
        "--image-feature",
        "img",
        "--label-feature",
        "y",
        "--schema",
        str(tmp_path / "schema.pbtxt"),
        output=tmp_path / "out",
    )
  assert "split 'test' is empty: no examples" in str(error.value)
  assert "split 'train', feature 'image': SCHEMA_MISSING_COLUMN" in str(error.value)
  _assert_stopped_at_the_gate(tmp_path / "out")


@pytest.mark.server
def test_a_search_corpus_is_indexed_beside_the_train_split(records_run):
  """`--search-corpus`: the DAG also indexes a folder of images it never
  trained on (nested folders, one image at its root, a bad file stopping
  nothing with --skip-bad-images): the pushed index holds the train split
  and exactly the folder's images, ids their paths and classes their first
  folders, and the server finds one of them first."""
  import base64

  import requests

  from models import search_index
  from serving.launch import ServerProcess

  config, corpus = records_run.config, records_run.corpus
  assert "SearchCorpusGen" in _states(config)
  assert all(s == "COMPLETE" for s in _states(config).values()), _states(config)
  index = search_index.load(os.path.join(_pushed(config), names.SEARCH_INDEX_DIR))
  expected = {
      rel: image_files.folder_label(rel)
      for rel in image_files.list_images(str(corpus), recursive=True)
      if not rel.endswith("broken.jpg")
  }
  indexed = dict(zip(index.records.ids, index.records.class_names))
  train = {i for i in indexed if i.startswith("train/")}
  assert train == {f"train/{n}" for n in range(len(train))} and train
  assert {i: c for i, c in indexed.items() if i not in train} == expected
  assert len(index) == len(indexed)  # each image once
  assert (
      len(expected) == 10
      and expected["loose.png"] == ""
      and expected["bags/2026/b0001.jpg"] == "bags"
  )
  with open(os.path.join(corpus, "bags", "2026", "b0001.jpg"), "rb") as f:
    query = base64.b64encode(f.read()).decode()
  with ServerProcess(["--model-dir", config.serving_model_dir]) as server:
    r = requests.post(
        f"{server.url}/v1/models/{config.pipeline_name}:neighbors",
        json={"instances": [{"b64": query}], "k": 2},
        timeout=60,
    )
  assert r.status_code == 200, r.text
  best = r.json()["neighbors"][0][0]
  assert best["id"] == "bags/2026/b0001.jpg" and best["score"] >= 0.999


def test_an_empty_search_corpus_is_named(small_cifar_dir, tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images here\n")
  with pytest.raises(
      SystemExit, match="--search-corpus .*empty: the search corpus holds no images"
  ):
    _run(
        "--data",
        small_cifar_dir,
        "--search-corpus",
        str(tmp_path / "empty"),
        output=tmp_path / "out",
    )
