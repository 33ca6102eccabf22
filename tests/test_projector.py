"""The Embedding Projector files (`models.projector`), read back with
TensorBoard's own proto and TensorFlow's checkpoint reader: tensor rows,
metadata rows and sprite cells line up; the Pusher writes them for the
index it pushed (the smoke run's), and TensorBoard, started as `make
tensorboard` starts it, serves them beside the Trainers' curves."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector as tb_projector

from models import config as config_lib
from models import names, projector


def test_tensor_metadata_and_sprite_line_up(cifar10_sample, tmp_path):
  (images, labels), _ = cifar10_sample
  images, labels = images[:300], labels[:300]
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(300, 16)).astype(np.float32)
  ids = [f"span-1/train/{i}" for i in range(300)]
  classes = [f"c\t{label}" for label in labels]  # a tab must not split a row
  spans = ["1"] * 300
  folder = str(tmp_path / "projector")
  written = projector.write(folder, vectors, ids, classes, spans, images, max_points=200)
  assert written["points"] == 200 and written["dim"] == 16
  config = tb_projector.ProjectorConfig()
  with open(os.path.join(folder, "projector_config.pbtxt")) as f:
    text_format.Parse(f.read(), config)
  (embedding,) = config.embeddings
  # The tensor: the sampled rows, in order.
  reader = tf.train.load_checkpoint(folder)
  tensor = reader.get_tensor(embedding.tensor_name)
  rows = written["rows"]
  assert tensor.shape == (200, 16) and len(set(rows)) == 200
  np.testing.assert_array_equal(tensor, vectors[rows])
  # The metadata: a header, then one row a vector, the same order.
  metadata = projector.read_metadata(os.path.join(folder))
  assert metadata[0] == ["id", "class", "span"] and len(metadata) == 201
  assert all(len(row) == 3 for row in metadata)
  assert [row[0] for row in metadata[1:]] == [ids[r] for r in rows]
  # The sprite: a square grid of cells, at most 8192 px, image i in cell i.
  sheet = np.asarray(Image.open(os.path.join(folder, embedding.sprite.image_path)))
  cell = embedding.sprite.single_image_dim[0]
  assert list(embedding.sprite.single_image_dim) == [cell, cell] == [32, 32]
  grid = int(np.ceil(np.sqrt(200)))
  assert sheet.shape == (grid * cell, grid * cell, 3) and sheet.shape[0] <= projector.SPRITE_MAX_PX
  last = 199
  row, col = divmod(last, grid)
  np.testing.assert_array_equal(
      sheet[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell], images[rows[last]]
  )
  assert not sheet[-cell:, -cell:].any()  # the cells past the last image are empty


def test_a_large_sample_shrinks_the_cells_to_fit_8192_px():
  grid_images = [np.zeros([32, 32, 3], np.uint8)] * 10_000
  sheet = projector.sprite(grid_images)
  assert sheet.shape[0] == 100 * 32 <= projector.SPRITE_MAX_PX
  many = [np.zeros([4, 4, 3], np.uint8)] * 300_000
  assert projector.sprite(many).shape[0] <= projector.SPRITE_MAX_PX


# ---- a pushed index's projector (models.projector.publish) ------------------
def _index_with_thumbnails(folder, images, labels, thumbnail_rows):
  """A saved exact index of random vectors over `images`, carrying a
  thumbnail store (models/thumbnails.py) as a pushed version's does: the
  rows in `thumbnail_rows` have one, the others none."""
  from models import search_index, thumbnails
  from tests.conftest import png_bytes

  rng = np.random.default_rng(1)
  records = search_index.Records(
      [f"train/{i}" for i in range(len(images))],
      [f"class {label}" for label in labels],
      ["1"] * len(images),
  )
  search_index.exact_index(rng.normal(size=(len(images), 8)), records).save(folder)
  store = [
      thumbnails.make(png_bytes(image), 64) if i in thumbnail_rows else b""
      for i, image in enumerate(images)
  ]
  thumbnails.write(folder, store)
  return records


def _decoded(jpeg):
  import io

  return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def sprite_cell(folder, embedding, i, count):
  """Cell `i` of the sprite of a projector folder holding `count` points."""
  sheet = np.asarray(Image.open(os.path.join(folder, embedding.sprite.image_path)))
  cell = embedding.sprite.single_image_dim[0]
  row, col = divmod(i, int(np.ceil(np.sqrt(count))))
  return sheet[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]


def read_config(folder):
  """The folder's projector_config.pbtxt, parsed with TensorBoard's proto."""
  config = tb_projector.ProjectorConfig()
  with open(os.path.join(folder, "projector_config.pbtxt")) as f:
    text_format.Parse(f.read(), config)
  return config


def test_publish_writes_the_index_with_its_thumbnails_and_replaces_the_older_version(
    cifar10_sample, tmp_path
):
  from models import search_index, thumbnails

  (images, labels), _ = cifar10_sample
  images, labels = images[:40], labels[:40]
  index_dir = str(tmp_path / "index")
  records = _index_with_thumbnails(index_dir, images, labels, set(range(40)) - {5})
  root = str(tmp_path / "projector" / "mae-tfx")
  os.makedirs(os.path.join(root, ".staging-7-99999"))  # a killed write's
  projector.publish(root, "7", index_dir, 30, "mae-tfx version 7")
  written = projector.publish(root, "8", index_dir, 30, "mae-tfx version 8")
  # Only the newest push's, moved into place whole.
  assert os.listdir(root) == ["8"] and written["folder"] == os.path.join(root, "8")
  assert written["points"] == 30 and written["total"] == 40 and written["sprite"]
  assert projector.describe(written) == (
      "30 of 40 vectors, drawn at random (8-d), with a sprite of their thumbnails"
  )
  folder = written["folder"]
  (embedding,) = read_config(folder).embeddings
  # The checkpoint is named relative to its folder: found after the rename.
  tensor = tf.train.load_checkpoint(folder).get_tensor(embedding.tensor_name)
  metadata = projector.read_metadata(folder)[1:]
  store = thumbnails.ThumbnailStore.load(index_dir)
  vectors = search_index.read_vectors(index_dir)
  row_of = {i: r for r, i in enumerate(records.ids)}
  assert tensor.shape == (30, 8) and len(metadata) == 30
  for i, (image_id, class_name, span) in enumerate(metadata):
    r = row_of[image_id]
    np.testing.assert_array_equal(tensor[i], vectors[r])
    assert (class_name, span) == (records.class_names[r], records.spans[r])
    cell = sprite_cell(folder, embedding, i, 30)
    if r == 5:  # no thumbnail: a black cell
      assert not cell.any()
    else:  # 32 px thumbnails in 32 px cells: the decoded JPEG itself
      np.testing.assert_array_equal(cell, _decoded(store[r]))


def test_publish_without_thumbnails_writes_no_sprite_and_a_wide_image_is_not_stretched(
    cifar10_sample, tmp_path
):
  (images, labels), _ = cifar10_sample
  index_dir = str(tmp_path / "index")
  _index_with_thumbnails(index_dir, images[:4], labels[:4], set())
  for name in ("thumbnails.bin", "thumbnail_offsets.npy"):
    os.remove(os.path.join(index_dir, name))
  written = projector.publish(str(tmp_path / "p"), "1", index_dir, 10, "v1")
  assert (
      not written["sprite"] and not read_config(written["folder"]).embeddings[0].sprite.image_path
  )
  assert not os.path.exists(os.path.join(written["folder"], "sprite.png"))
  wide = np.full([16, 32, 3], 255, np.uint8)  # 2:1, in a 32 px cell: 8 black rows above and below
  cell = projector.sprite([wide])
  assert not cell[:8].any() and not cell[24:].any() and (cell[8:24] == 255).all()


# ---- the smoke run's (the Pusher's) ------------------------------------------
@pytest.fixture(scope="module")
def pushed_projector(smoke_run):
  """(the projector folder the smoke run's Pusher wrote, the pushed version's
  index folder)."""
  from tests.conftest import served_versions

  version = served_versions(smoke_run)[-1]
  root = smoke_run.projector_dir
  assert os.listdir(root) == [version], "the newest push's projector only"
  index_dir = os.path.join(smoke_run.serving_model_dir, version, names.SEARCH_INDEX_DIR)
  return os.path.join(root, version), index_dir


def test_the_pusher_writes_the_pushed_index_as_a_projector(pushed_projector, smoke_run_log):
  from models import search_index, thumbnails

  folder, index_dir = pushed_projector
  records = search_index.read_records(index_dir)
  vectors = search_index.read_vectors(index_dir)
  (embedding,) = read_config(folder).embeddings
  tensor = tf.train.load_checkpoint(folder).get_tensor(embedding.tensor_name)
  metadata = projector.read_metadata(folder)
  points = min(len(records.ids), config_lib.SearchConfig().projector_points)
  assert metadata[0] == ["id", "class", "span"]
  assert tensor.shape == (points, vectors.shape[1]) and len(metadata) - 1 == points
  row_of = {image_id: r for r, image_id in enumerate(records.ids)}
  rows = [row_of[image_id] for image_id, _, _ in metadata[1:]]
  assert len(set(rows)) == points
  np.testing.assert_array_equal(tensor, np.asarray(vectors[rows], np.float32))
  assert [m[1:] for m in metadata[1:]] == [
      [records.class_names[r] or "-", records.spans[r] or "-"] for r in rows
  ]
  store = thumbnails.ThumbnailStore.load(index_dir)
  if store is None:  # a run that writes no thumbnails has no sprite
    assert not embedding.sprite.image_path
  else:
    for i, r in enumerate(rows):
      expected = projector.sprite([_decoded(store[r])]) if store[r] else 0
      np.testing.assert_array_equal(sprite_cell(folder, embedding, i, points), expected)
  # The run log says where it went.
  log, report = smoke_run_log
  line = f"Embedding Projector: all {points} vectors ({vectors.shape[1]}-d)"
  assert line in log and f"in {folder}" in log and line in report


@pytest.mark.server
def test_tensorboard_shows_the_projector_beside_the_training_curves(
    smoke_run, pushed_projector, tmp_path
):
  """`make tensorboard`'s command on the smoke run's outputs, a real
  TensorBoard on loopback: its projector plugin lists the pushed version's
  run and serves the tensor, metadata and sprite the files hold; the
  Trainers' logs are runs beside it."""
  folder, _ = pushed_projector
  run = os.path.relpath(folder, smoke_run.pipeline_root)
  board = TensorBoardProcess(smoke_run.output_dir, tmp_path / "stderr.txt")
  with board as url:
    projector_runs = requests.get(f"{url}/data/plugin/projector/runs", timeout=30).json()
    info = requests.get(f"{url}/data/plugin/projector/info", params={"run": run}, timeout=30)
    (embedding,) = info.json()["embeddings"]
    name = embedding["tensorName"]
    tensor = requests.get(
        f"{url}/data/plugin/projector/tensor", params={"run": run, "name": name}, timeout=30
    )
    metadata = requests.get(
        f"{url}/data/plugin/projector/metadata", params={"run": run, "name": name}, timeout=30
    )
    sprite = requests.get(
        f"{url}/data/plugin/projector/sprite_image", params={"run": run, "name": name}, timeout=30
    )
    runs = requests.get(f"{url}/data/runs", timeout=30).json()
  assert projector_runs == [run]
  expected = tf.train.load_checkpoint(folder).get_tensor(projector.TENSOR_NAME)
  assert name == projector.TENSOR_NAME and embedding["tensorShape"] == list(expected.shape)
  np.testing.assert_array_equal(
      np.frombuffer(tensor.content, np.float32).reshape(expected.shape), expected
  )
  assert metadata.text.splitlines() == ["\t".join(row) for row in projector.read_metadata(folder)]
  if embedding.get("sprite"):
    with open(os.path.join(folder, "sprite.png"), "rb") as f:
      assert sprite.content == f.read()
  else:
    assert sprite.status_code == 400  # no sprite: no thumbnails in this run
  trainer_runs = {r.split("/")[0] for r in runs if "/model_run/" in r}
  assert trainer_runs == {names.MAE_TRAINER, names.PROBE_TRAINER} and run in runs
  # Its log: what it shows, TensorBoard's own lines, no known-harmless one.
  assert f"Embedding Projector: run {run}" in board.stderr and "Traceback" not in board.stderr
  assert "fast data loading" not in board.stderr, board.stderr


class TensorBoardProcess:
  """`python -m pipeline.tensorboard_logs` (`make tensorboard`) on an
  output folder, on a free loopback port: entered with its URL once it
  listens, terminated on exit; its stderr kept in `stderr_path`."""

  _LISTENING = re.compile(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+)/")

  def __init__(self, output_dir, stderr_path, timeout=120.0):
    self.args = ["--output-dir", str(output_dir), "--port", "0"]
    self.stderr_path, self.timeout = str(stderr_path), timeout

  def __enter__(self) -> str:
    with open(self.stderr_path, "w") as stderr:
      self.process = subprocess.Popen(
          [sys.executable, "-m", "pipeline.tensorboard_logs", *self.args],
          cwd=names.PROJECT_DIR,
          stdout=subprocess.DEVNULL,
          stderr=stderr,
          start_new_session=True,  # its own process group, for `__exit__`'s Ctrl-C
      )
    deadline = time.monotonic() + self.timeout
    while time.monotonic() < deadline and self.process.poll() is None:
      listening = self._LISTENING.search(self.stderr)
      if listening:
        return listening.group(1)
      time.sleep(0.2)
    self.__exit__()
    raise RuntimeError(f"TensorBoard did not start:\n{self.stderr[-3000:]}")

  @property
  def stderr(self) -> str:
    with open(self.stderr_path) as f:
      return f.read()

  def __exit__(self, *exc) -> None:
    # Ctrl-C, as at a terminal: to TensorBoard and its data server alike (a
    # TERM to TensorBoard alone leaves the data server holding its stderr,
    # which the run-log filter then waits 10 s for).
    os.killpg(self.process.pid, signal.SIGINT)
    try:
      self.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
