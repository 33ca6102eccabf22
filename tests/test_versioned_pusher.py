"""The Pusher never overwrites a version and never exposes a half-copied one."""

import os

from components.versioned_pusher import next_version, push_to_filesystem


def _model(path, content, fingerprint=None):
  os.makedirs(os.path.join(path, "variables"))
  with open(os.path.join(path, "saved_model.pb"), "w") as f:
    f.write(content)
  if fingerprint:
    with open(os.path.join(path, "fingerprint.pb"), "w") as f:
      f.write(fingerprint)
  return path


def test_pushes_in_the_same_second_get_distinct_versions(tmp_path):
  base = str(tmp_path / "serving")
  a = push_to_filesystem(_model(str(tmp_path / "a"), "model a"), base)
  b = push_to_filesystem(_model(str(tmp_path / "b"), "model b"), base)
  assert int(b) > int(a)
  assert open(os.path.join(base, a, "saved_model.pb")).read() == "model a"
  assert open(os.path.join(base, b, "saved_model.pb")).read() == "model b"
  assert sorted(os.listdir(base)) == sorted([a, b])  # no staging leftovers


def test_next_version_is_newer_than_any_existing(tmp_path):
  base = tmp_path / "serving"
  (base / "9999999999").mkdir(parents=True)
  (base / "notes").mkdir()
  assert next_version(str(base), now=100) == 10000000000
  assert next_version(str(tmp_path / "missing"), now=100) == 100


def test_the_model_already_served_newest_is_not_pushed_again(tmp_path):
  base = str(tmp_path / "serving")
  model = _model(str(tmp_path / "a"), "model a", fingerprint="fp-a")
  first = push_to_filesystem(model, base)
  assert push_to_filesystem(model, base) == first
  assert os.listdir(base) == [first]
  other = _model(str(tmp_path / "b"), "model b", fingerprint="fp-b")
  assert push_to_filesystem(other, base) != first
  assert len(os.listdir(base)) == 2


def test_the_next_push_removes_staging_left_by_a_killed_push(tmp_path):
  import subprocess
  import sys

  base = tmp_path / "serving"
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # a pid that no longer runs
  (base / f".staging-1700000000-{dead.pid}" / "variables").mkdir(parents=True)
  (base / f".staging-1700000001-{os.getpid()}").mkdir()  # a push still running
  version = push_to_filesystem(_model(str(tmp_path / "a"), "model a"), str(base))
  assert sorted(os.listdir(base)) == sorted([version, f".staging-1700000001-{os.getpid()}"])


def test_an_index_only_push_links_the_served_model_with_the_new_index(tmp_path):
  """The served version's SavedModel again (hard links, its own index left
  behind) with a new index: a new version, the served one untouched; the
  same records again (saved anew) are not a new version."""
  import numpy as np

  from models.names import SEARCH_INDEX_DIR

  def records(folder, ids):
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, "records.npz"), ids=np.array(ids), class_names=np.array(ids))

  base = str(tmp_path / "serving")
  model = _model(str(tmp_path / "a"), "model a", fingerprint="fp-a")
  records(os.path.join(model, SEARCH_INDEX_DIR), ["x"])
  served = push_to_filesystem(model, base)
  new_index = str(tmp_path / "index")
  records(new_index, ["x", "y"])
  version = push_to_filesystem(os.path.join(base, served), base, new_index, link=True)
  assert int(version) > int(served)
  old, new = os.path.join(base, served), os.path.join(base, version)
  assert os.path.samefile(os.path.join(old, "saved_model.pb"), os.path.join(new, "saved_model.pb"))
  with np.load(os.path.join(new, SEARCH_INDEX_DIR, "records.npz")) as f:
    assert f["ids"].tolist() == ["x", "y"]
  with np.load(os.path.join(old, SEARCH_INDEX_DIR, "records.npz")) as f:
    assert f["ids"].tolist() == ["x"]
  # The same records, written again (another time stamp in the zip), are
  # not a new version.
  again = str(tmp_path / "again")
  records(again, ["x", "y"])
  assert push_to_filesystem(new, base, again, link=True) == version
