"""Cifar10ExampleGen and the data source: the official format in, tf.Examples out."""

import io
import os
import pickle
import tarfile

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import cifar10_example_gen as eg
from models import cifar10, names
from pipeline import data_source
from tests.conftest import cifar10_class_names, write_batch_file, write_cifar_dir


@pytest.fixture
def tiny_dir(tmp_path, cifar10_sample):
  (train, train_labels), (test, test_labels) = cifar10_sample
  return write_cifar_dir(
      str(tmp_path / "cifar-10-batches-py"),
      (train[:20], train_labels[:20]),
      (test[:7], test_labels[:7]),
  )


def test_read_batch_file_round_trip(tmp_path, cifar10_sample):
  (images, labels), _ = cifar10_sample
  path = str(tmp_path / "data_batch_1")
  write_batch_file(path, images[:10], labels[:10])
  got_images, got_labels = cifar10.read_batch_file(path)
  np.testing.assert_array_equal(got_images, images[:10])
  np.testing.assert_array_equal(got_labels, labels[:10])


def _examples_of_split(input_base, pattern, tmp_path):
  prefix = str(tmp_path / pattern.replace("*", "x"))
  with beam.Pipeline() as p:
    _ = (
        p
        | eg._CifarBatchesToExample({"input_base": input_base}, pattern)
        | beam.Map(lambda e: e.SerializeToString())
        | beam.io.WriteToTFRecord(prefix)
    )
  return [
      tf.train.Example.FromString(r.numpy())
      for r in tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "*"))
  ]


def test_beam_transform_emits_lossless_png_examples(tiny_dir, cifar10_sample, tmp_path):
  (train, train_labels), _ = cifar10_sample
  train_examples = _examples_of_split(tiny_dir, eg.TRAIN_PATTERN, tmp_path)
  test_examples = _examples_of_split(tiny_dir, eg.TEST_PATTERN, tmp_path)
  assert len(train_examples) == 20 and len(test_examples) == 7
  expected = {train[i].tobytes(): int(train_labels[i]) for i in range(20)}
  for ex in train_examples:
    f = ex.features.feature
    assert set(f) == {"image", "label", "class_name", *names.IMAGE_STATISTICS_KEYS}
    png = f["image"].bytes_list.value[0]
    assert png.startswith(b"\x89PNG")
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    label = f["label"].int64_list.value[0]
    assert expected[pixels.tobytes()] == label
    # The image's statistics, for StatisticsGen and the drift comparators.
    assert f[names.IMAGE_HEIGHT_KEY].int64_list.value == [32]
    assert f[names.IMAGE_WIDTH_KEY].int64_list.value == [32]
    np.testing.assert_allclose(
        [f[k].float_list.value[0] for k in names.CHANNEL_MEAN_KEYS],
        pixels.reshape(-1, 3).mean(0),
        rtol=1e-5,
    )
    # The name batches.meta gives the id, as the curated schema lists them.
    assert f["class_name"].bytes_list.value[0].decode() == cifar10_class_names()[label]


def test_truncated_batch_file_is_named(tmp_path, cifar10_sample):
  (images, labels), _ = cifar10_sample
  path = str(tmp_path / "data_batch_3")
  write_batch_file(path, images[:10], labels[:10])
  with open(path, "r+b") as f:
    f.truncate(5000)
  with pytest.raises(cifar10.CifarFormatError, match=r"data_batch_3.*(truncated|corrupt)"):
    cifar10.read_batch_file(path)


def test_wrong_data_shape_is_named(tmp_path):
  path = str(tmp_path / "data_batch_1")
  with open(path, "wb") as f:
    pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f, protocol=2)
  with pytest.raises(
      cifar10.CifarFormatError,
      match=r"data_batch_1: field b'data' must be a uint8 array of "
      r"shape \(N, 3072\), got uint8 array of shape \(4, 100\)",
  ):
    cifar10.read_batch_file(path)


def test_label_count_mismatch_is_named(tmp_path):
  path = str(tmp_path / "test_batch")
  with open(path, "wb") as f:
    pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, f)
  with pytest.raises(cifar10.CifarFormatError, match="4 images in b'data' but 3 entries"):
    cifar10.read_batch_file(path)


def test_pickle_that_runs_code_is_refused(tmp_path):
  path = str(tmp_path / "data_batch_1")
  with open(path, "wb") as f:
    pickle.dump({b"data": os.system}, f)  # would import posix.system on load
  with pytest.raises(cifar10.CifarFormatError, match="forbidden global"):
    cifar10.read_batch_file(path)


# ---------------------------------------------------------------- data source
def _tar_gz(folder, path):
  with tarfile.open(path, "w:gz") as tar:
    tar.add(folder, arcname=data_source.BATCHES_DIR)
  return path


def test_resolve_folder_archive_and_parts(tmp_path, tiny_dir):
  cache = str(tmp_path / "cache")
  assert data_source.resolve_cifar10(tiny_dir, cache) == tiny_dir
  assert data_source.resolve_cifar10(os.path.dirname(tiny_dir), cache) == tiny_dir
  archive = _tar_gz(tiny_dir, str(tmp_path / "cifar-10-python.tar.gz"))
  extracted = data_source.resolve_cifar10(archive, cache)
  assert sorted(os.listdir(extracted)) == sorted(data_source.REQUIRED_FILES)
  parts = tmp_path / "parts"
  parts.mkdir()
  blob = open(archive, "rb").read()
  for i, k in enumerate(range(0, len(blob), 10000)):
    (parts / f"cifar-10-python.tar.gz.part-a{'abcdefghijklmnopqrstuvwxyz'[i]}").write_bytes(
        blob[k : k + 10000]
    )
  assert data_source.resolve_cifar10(str(parts), cache) == extracted  # same content


def test_truncated_archive_is_named_and_leaves_nothing(tmp_path, tiny_dir):
  archive = _tar_gz(tiny_dir, str(tmp_path / "broken.tar.gz"))
  with open(archive, "r+b") as f:
    f.truncate(os.path.getsize(archive) // 2)
  cache = tmp_path / "cache"
  with pytest.raises(data_source.DataSourceError, match="broken.tar.gz.*truncated"):
    data_source.resolve_cifar10(archive, str(cache))
  assert [p for p in os.listdir(cache) if not p.startswith(".")] == []


def test_incomplete_folder_is_named(tmp_path, tiny_dir):
  os.remove(os.path.join(tiny_dir, "data_batch_4"))
  with pytest.raises(data_source.DataSourceError, match=r"missing \['data_batch_4'\]"):
    data_source.resolve_cifar10(tiny_dir, str(tmp_path / "cache"))


def test_missing_source_is_named(tmp_path):
  with pytest.raises(data_source.DataSourceError, match="does not exist"):
    data_source.resolve_cifar10(str(tmp_path / "nope"), str(tmp_path / "cache"))
