"""Image folders: layouts, the split hash, reading any image format, bad files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from models import image_files, names, schema
from models.names import SCHEMA_PATH
from pipeline import data_source
from tests.conftest import IMAGE_FOLDER_CLASSES, cifar10_class_names, save_image


def test_hash_split_is_stable_across_processes_and_near_its_fraction():
  paths = [f"class{i % 7}/img{i:05d}.jpg" for i in range(5000)]
  here = [image_files.hash_split(p, 0.2) for p in paths]
  # Another interpreter, with another string-hash seed, splits the same way.
  code = (
      "import sys; from models.image_files import hash_split; "
      "print(''.join('t' if hash_split(f'class{i % 7}/img{i:05d}.jpg', 0.2) == 'test' "
      "else '.' for i in range(5000)))"
  )
  other = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHONHASHSEED": "12345"},
      check=True,
  )
  assert other.stdout.strip() == "".join("t" if s == "test" else "." for s in here)
  assert 0.18 < here.count("test") / len(here) < 0.22
  # A file's split depends on its own path only: other files never move it.
  assert [image_files.hash_split(p, 0.2) for p in paths[:100]] == here[:100]


def test_class_folders_ignore_hidden_and_non_image_files(photo_folder):
  root, _ = photo_folder
  layout = image_files.detect_layout(root)
  names = cifar10_class_names()
  assert layout.kind == image_files.CLASS_FOLDERS
  assert layout.class_names == sorted(names[c] for c in IMAGE_FOLDER_CLASSES)
  files = [rel for split in layout.files.values() for rel, _ in split]
  assert not [f for f in files if f.endswith((".txt", ".DS_Store"))]
  assert "cat/broken.jpg" in files  # an image by its name: read_image judges it
  for split, entries in layout.files.items():
    for rel, label in entries:
      assert rel.split("/")[0] == layout.class_names[label]
      assert image_files.hash_split(rel, 0.2) == split
  assert set(layout.counts()) == {"train", "test"} and min(layout.counts().values()) > 0


def test_split_folders_number_train_classes_first(tmp_path, cifar10_sample):
  (images, _), _ = cifar10_sample
  for split, classes in (("train", ["dog", "cat"]), ("test", ["cat", "dog", "emu"])):
    for c in classes:
      save_image(images[0], str(tmp_path / split / c / "a.png"))
  (tmp_path / "train" / "empty_class").mkdir()
  layout = image_files.detect_layout(str(tmp_path))
  assert layout.kind == image_files.SPLIT_FOLDERS_LAYOUT
  # A class only the test split has gets an id past train's: the schema flags it.
  assert layout.class_names == ["cat", "dog", "emu"]
  assert layout.files["test"] == [
      ("test/cat/a.png", 0),
      ("test/dog/a.png", 1),
      ("test/emu/a.png", 2),
  ]


def test_a_folder_without_class_folders_is_refused(tmp_path, cifar10_sample):
  (images, _), _ = cifar10_sample
  save_image(images[0], str(tmp_path / "loose.png"))
  with pytest.raises(
      ValueError, match=r"no class folder holds images .* expected <root>/<class>/<image>"
  ):
    image_files.detect_layout(str(tmp_path))
  save_image(images[0], str(tmp_path / "train" / "cat" / "a.png"))
  with pytest.raises(ValueError, match=r"has train/ but no test/"):
    image_files.detect_layout(str(tmp_path))


def test_every_format_and_channel_count_decodes_to_rgb(photo_folder):
  root, unlabeled = photo_folder
  layout = image_files.detect_layout(root)
  paths = [
      os.path.join(root, rel)
      for split in layout.files.values()
      for rel, _ in split
      if not rel.endswith("broken.jpg")
  ]
  paths += [os.path.join(unlabeled, rel) for rel in image_files.list_images(unlabeled, True)]
  suffixes = {os.path.splitext(p)[1] for p in paths}
  assert suffixes == {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".JPG"}
  for path in paths:
    checked = image_files.read_image(path)
    image = tf.io.decode_image(checked.data, channels=3, expand_animations=False)
    assert image.shape[-1] == 3 and image.shape[0] >= 32, path
    if path.endswith((".bmp", ".gif")):
      assert checked.data.startswith(b"\x89PNG")  # converted for TensorFlow's decoder
    # The statistics are those of the decoded pixels (JPEG: PIL's decoder and
    # TensorFlow's upsample chroma differently, a few grey levels apart).
    stats = checked.statistics
    assert (stats.height, stats.width) == tuple(image.shape[:2]), path
    jpeg = path.lower().endswith((".jpg", ".jpeg"))
    np.testing.assert_allclose(
        stats.channel_means,
        image.numpy().reshape(-1, 3).mean(0),
        atol=3.0 if jpeg else 0.01,
        err_msg=path,
    )
  # Grayscale and RGBA PNGs keep their bytes; TensorFlow reads them as RGB.
  gray = next(p for p in paths if p.endswith("0002.png"))
  with open(gray, "rb") as f:
    assert image_files.read_image(gray).data == f.read()


def test_span_folders_are_found_and_a_missing_span_is_named(tmp_path):
  for name in ("span-1", "span-2", "span-10", "notes", ".span-3"):
    (tmp_path / name).mkdir()
  (tmp_path / "span-4").write_text("a file, not a span")
  assert image_files.span_folders(str(tmp_path)) == {1: "span-1", 2: "span-2", 10: "span-10"}
  assert image_files.span_root(str(tmp_path), 10) == str(tmp_path / "span-10")
  with pytest.raises(ValueError, match=r"no span 3 \(spans there: \[1, 2, 10\]"):
    image_files.span_root(str(tmp_path), 3)
  (tmp_path / "span-01").mkdir()
  with pytest.raises(ValueError, match="span 1 is in two folders, span-01 and span-1"):
    image_files.span_folders(str(tmp_path))
  assert image_files.span_folders(str(tmp_path / "notes")) == {}


def test_unlabeled_images_are_found_at_any_depth_skipping_hidden_folders(photo_folder):
  _, unlabeled = photo_folder
  files = image_files.list_images(unlabeled, recursive=True)
  assert len(files) == 64
  assert any(f.startswith("b/deeper/") for f in files)
  assert not any(".hidden" in f for f in files)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"GIF89a not really", "not a readable image"),
        ("truncate", "not a readable image"),
    ],
)
def test_bad_image_files_are_named(tmp_path, cifar10_sample, content, reason):
  (images, _), _ = cifar10_sample
  path = str(tmp_path / "bad.jpg")
  if content == "truncate":
    save_image(images[0], path, size=(64, 64))
    with open(path, "r+b") as f:
      f.truncate(400)
  else:
    with open(path, "wb") as f:
      f.write(content)
  with pytest.raises(image_files.BadImageError, match=f"^{path}: {reason}"):
    image_files.read_image(path)


def test_folder_fingerprint_changes_with_any_file(tmp_path, cifar10_sample):
  (images, _), _ = cifar10_sample
  save_image(images[0], str(tmp_path / "a" / "x.png"))
  before = image_files.folder_fingerprint(str(tmp_path))
  assert before == image_files.folder_fingerprint(str(tmp_path))
  save_image(images[1], str(tmp_path / "a" / "x.png"))  # rewritten in place
  os.utime(tmp_path / "a" / "x.png", ns=(1, 1))
  assert image_files.folder_fingerprint(str(tmp_path)) != before
  assert image_files.folder_fingerprint(None) == image_files.folder_fingerprint("gs://b/x") == ""


def test_data_formats_are_told_apart(tmp_path, photo_folder, small_cifar_dir):
  root, _ = photo_folder
  assert data_source.detect_format(small_cifar_dir) == data_source.CIFAR10
  assert data_source.detect_format(root) == data_source.IMAGE_FOLDER
  records = tmp_path / "records"
  records.mkdir()
  (records / "part-0.tfrecord.gz").write_bytes(b"")
  assert data_source.detect_format(str(records)) == data_source.TFRECORD
  with pytest.raises(data_source.DataSourceError, match="does not exist"):
    data_source.detect_format(str(tmp_path / "nowhere"))
  # Laid out in spans: the newest span says what the source holds.
  spans = tmp_path / "spans"
  (spans / "span-1" / "cat").mkdir(parents=True)
  (spans / "span-2").mkdir()
  (spans / "span-2" / "part-0.tfrecord").write_bytes(b"")
  assert data_source.detect_format(str(spans)) == data_source.TFRECORD
  assert data_source.span_of(str(spans), None) == 2
  assert data_source.span_of(str(spans), 1) == 1
  with pytest.raises(ValueError, match=r"no span 7 \(spans there: \[1, 2\]"):
    data_source.span_of(str(spans), 7)
  assert data_source.span_of(root, None) is None
  with pytest.raises(data_source.DataSourceError, match="is not laid out in spans"):
    data_source.span_of(root, 1)


def test_generated_schema_lists_the_classes_and_is_never_overwritten(tmp_path, photo_folder):
  root, _ = photo_folder
  path = str(tmp_path / "schemas" / "photos" / "schema.pbtxt")
  assert data_source.ensure_schema(root, data_source.IMAGE_FOLDER, path, 0.2)
  generated = schema.read_schema(path)
  assert schema.class_names(generated) == image_files.detect_layout(root).class_names
  label = next(f for f in generated.feature if f.name == "label")
  assert (label.int_domain.min, label.int_domain.max) == (0, 2)
  with open(path) as f:
    assert "Review it and check it in" in f.read()
  with open(path, "a") as f:
    f.write("# reviewed\n")
  assert not data_source.ensure_schema(root, data_source.IMAGE_FOLDER, path, 0.2)
  with open(path) as f:
    assert f.read().endswith("# reviewed\n")
  # The curated CIFAR-10 schema names its classes the same way, and checks
  # the same features with the same drift comparators (it has no image files).
  curated = schema.read_schema(SCHEMA_PATH)
  assert schema.class_names(curated)[:2] == ["airplane", "automobile"]
  same = {
      f.name: f
      for f in schema.dataset_schema(schema.class_names(curated)).feature
      if f.name != names.IMAGE_PATH_KEY
  }
  assert {f.name: f for f in curated.feature} == same
  assert {f.name for f in generated.feature if f.HasField("drift_comparator")} == {
      names.CLASS_NAME_KEY,
      *names.IMAGE_STATISTICS_KEYS,
  }


def test_tfrecord_classes_come_from_class_names_txt_or_the_ids(tmp_path):
  def write(path, labels):
    with tf.io.TFRecordWriter(str(path)) as w:
      for y in labels:
        w.write(
            tf.train.Example(
                features=tf.train.Features(
                    feature={"y": tf.train.Feature(int64_list=tf.train.Int64List(value=[y]))}
                )
            ).SerializeToString()
        )

  write(tmp_path / "a.tfrecord", [0, 3, 1])
  assert data_source.class_names(str(tmp_path), data_source.TFRECORD, label_feature="y") == [
      "0",
      "1",
      "2",
      "3",
  ]
  (tmp_path / "class_names.txt").write_text("ant\nbee\ncow\ndog\n")
  assert data_source.class_names(str(tmp_path), data_source.TFRECORD, label_feature="y") == [
      "ant",
      "bee",
      "cow",
      "dog",
  ]
