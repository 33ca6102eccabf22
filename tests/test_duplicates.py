"""Near-duplicates (`serving.duplicates`): pairs inside one corpus and between
two, on embeddings files written by `python -m serving.embed` with the model
the smoke pipeline pushed, of real CIFAR-10 test images and JPEG
re-compressed copies of some of them. What is listed is checked against the
cosine similarities of the files' own vectors; files that cannot be
compared are refused, naming why."""

import csv
import os

import numpy as np
import pytest

from serving import duplicates, embed
from serving.embeddings import EmbeddingsFile
from tests.conftest import cifar10_class_names, jpeg_bytes, png_bytes

COPIED = 6  # originals 0-5 have a JPEG copy


@pytest.fixture(scope="module")
def files(model_base, cifar10_sample, tmp_path_factory):
  """(originals.npz: 30 real test images as PNG in <class>/ folders,
  copies.npz: JPEG (quality 95) copies of the first COPIED of them), both
  written by `serving.embed` with the smoke model."""
  _, (images, labels) = cifar10_sample
  class_names = cifar10_class_names()
  root = tmp_path_factory.mktemp("duplicates")
  for i, (image, label) in enumerate(zip(images[:30], labels[:30])):
    folder = root / "originals" / class_names[int(label)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{i:02d}.png").write_bytes(png_bytes(image))
    if i < COPIED:
      folder = root / "copies" / class_names[int(label)]
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i:02d}.jpg").write_bytes(jpeg_bytes(image))
  out = {}
  for name in ("originals", "copies"):
    out[name] = str(root / f"{name}.npz")
    embed.main(
        [
            "--model-dir",
            model_base,
            "--images",
            str(root / name),
            "--out",
            out[name],
            "--no-progress",
        ]
    )
  return out["originals"], out["copies"]


def _cosines(a: EmbeddingsFile, b: EmbeddingsFile) -> np.ndarray:
  """What near-duplicate search compares: cosines of the duplicate vectors."""

  def unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  return unit(a.duplicate_vectors()) @ unit(b.duplicate_vectors()).T


def _stem(item_id: str) -> str:
  """'cat/03.png' -> '03': the image a file was made from."""
  return os.path.splitext(item_id.split("/")[-1])[0]


def test_inside_one_corpus_every_pair_at_or_above_the_threshold_once(files):
  originals, copies = files
  # Both files as one corpus: each copy next to its original.
  a, b = EmbeddingsFile.load(originals), EmbeddingsFile.load(copies)
  both = EmbeddingsFile(
      np.concatenate([a.embeddings, b.embeddings]),
      np.concatenate([a.ids, np.char.add("copy/", b.ids)]),
      np.concatenate([a.labels, b.labels]),
      a.meta,
  )
  sims = _cosines(both, both)
  copy_scores = [
      sims[list(both.ids).index(f"copy/{c}"), list(both.ids).index(o)]
      for c in b.ids
      for o in a.ids
      if _stem(c) == _stem(o)
  ]
  threshold = float(min(copy_scores)) - 1e-4  # every copy pairs with its original
  n = len(both.ids)
  # With every other item a neighbour, the pairs are exactly those at or
  # above the threshold.
  found = duplicates.find_pairs(both, threshold=threshold, max_per_item=n)
  expected = {
      (both.ids[i], both.ids[j])
      for i in range(n)
      for j in range(i + 1, n)
      if sims[i, j] >= threshold
  }
  listed = [(p.id_a, p.id_b) for p in found.pairs]
  assert len(listed) == len(set(listed)) and set(listed) == expected
  assert all(p.id_a != p.id_b for p in found.pairs)
  assert {(o, f"copy/{c}") for c in b.ids for o in a.ids if _stem(c) == _stem(o)} <= expected
  scores = [p.score for p in found.pairs]
  assert scores == sorted(scores, reverse=True) and min(scores) >= threshold
  row = {i: r for r, i in enumerate(both.ids)}
  for p in found.pairs:
    assert p.score == pytest.approx(sims[row[p.id_a], row[p.id_b]], abs=1e-5)
    assert row[p.id_a] < row[p.id_b]
    assert (p.class_a, p.class_b) == (both.labels[row[p.id_a]], both.labels[row[p.id_b]])
  assert found.items_with_a_duplicate() == (len({i for pair in listed for i in pair}), None)
  # One neighbour per item: a pair is an item and its nearest other one.
  nearest = sims - 2 * np.eye(n)
  found = duplicates.find_pairs(both, threshold=threshold, max_per_item=1)
  expected = {
      tuple(sorted((i, int(np.argmax(nearest[i])))))
      for i in range(n)
      if nearest[i].max() >= threshold
  }
  assert {(row[p.id_a], row[p.id_b]) for p in found.pairs} == expected
  # A threshold above every score lists nothing.
  top = float(nearest.max())
  assert not duplicates.find_pairs(both, threshold=top + 1e-4, max_per_item=n).pairs


def test_between_two_corpora_the_cli_writes_every_pair(files, tmp_path, capsys):
  originals, copies = files
  a, b = EmbeddingsFile.load(copies), EmbeddingsFile.load(originals)
  sims = _cosines(a, b)
  threshold = (
      float(min(sims[i, list(map(_stem, b.ids)).index(_stem(c))] for i, c in enumerate(a.ids)))
      - 1e-4
  )
  for out, delimiter in (str(tmp_path / "pairs.tsv"), "\t"), (str(tmp_path / "pairs.csv"), ","):
    found = duplicates.main(
        [
            "--embeddings",
            copies,
            "--against",
            originals,
            "--threshold",
            repr(threshold),
            "-k",
            str(len(b.ids)),
            "--out",
            out,
        ]
    )
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
      rows = list(csv.reader(f, delimiter=delimiter))
    assert tuple(rows[0]) == duplicates.COLUMNS == ("id_a", "class_a", "id_b", "class_b", "score")
    expected = {
        (a.ids[i], b.ids[j])
        for i in range(len(a.ids))
        for j in range(len(b.ids))
        if sims[i, j] >= threshold
    }
    assert {(r[0], r[2]) for r in rows[1:]} == expected and len(rows) - 1 == len(expected)
    assert {(c, o) for c in a.ids for o in b.ids if _stem(c) == _stem(o)} <= expected
    scores = [float(r[4]) for r in rows[1:]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= threshold - 1e-6
    assert all(r[0] in a.ids and r[2] in b.ids for r in rows[1:])
    assert all(r[1] == r[0].split("/")[0] and r[3] == r[2].split("/")[0] for r in rows[1:])
    with_a, with_b = found.items_with_a_duplicate()
    assert with_a == COPIED and with_b == len({r[2] for r in rows[1:]})
    assert (
        f"{len(expected)} near-duplicate pairs between {COPIED} and 30 items" in printed
        and f"items with a duplicate: {COPIED} of {COPIED} (100.00%) in the first" in printed
    ), printed
  # The default threshold (the model's own, carried by the files) and
  # neighbours per item.
  model_threshold = a.duplicate_threshold
  assert model_threshold is not None and model_threshold == b.duplicate_threshold
  found = duplicates.main(["--embeddings", copies, "--against", originals])
  assert (found.threshold, found.max_per_item) == (
      model_threshold,
      duplicates.DEFAULT_MAX_PER_ITEM,
  )
  assert all(p.score >= model_threshold for p in found.pairs)


def test_files_carry_the_models_duplicate_projection_and_older_files_still_work(
    files, model_base, tmp_path
):
  """serving.embed writes the pushed model's projection and threshold into
  the file; a file without them (older code) is searched on its embeddings
  at DUPLICATE_THRESHOLD, and is not mixed with one that has them."""
  from serving.model_store import load_version

  originals, copies = files
  table = EmbeddingsFile.load(originals)
  projection, threshold = load_version(model_base).duplicate_projection()
  assert projection is not None and projection.shape[0] == table.embeddings.shape[1]
  np.testing.assert_array_equal(table.duplicate_projection, projection)
  assert table.duplicate_threshold == threshold and -1.0 < threshold <= 1.0
  np.testing.assert_allclose(
      table.duplicate_vectors(), table.embeddings @ projection, rtol=1e-5, atol=1e-5
  )
  older = str(tmp_path / "older.npz")
  meta = {k: v for k, v in table.meta.items() if k != "duplicate_threshold"}
  EmbeddingsFile(table.embeddings, table.ids, table.labels, meta).save(older)
  reloaded = EmbeddingsFile.load(older)
  assert reloaded.duplicate_projection is None and reloaded.duplicate_threshold is None
  found = duplicates.find_pairs(reloaded, max_per_item=len(reloaded.ids))
  assert found.threshold == duplicates.DUPLICATE_THRESHOLD
  raw = reloaded.embeddings / np.linalg.norm(reloaded.embeddings, axis=1, keepdims=True)
  sims = raw @ raw.T
  expected = {
      (reloaded.ids[i], reloaded.ids[j])
      for i in range(len(sims))
      for j in range(i + 1, len(sims))
      if sims[i, j] >= duplicates.DUPLICATE_THRESHOLD
  }
  assert {(p.id_a, p.id_b) for p in found.pairs} == expected
  with pytest.raises(
      SystemExit, match=r"only --against carries the model's duplicate projection.*re-embed"
  ):
    duplicates.main(["--embeddings", older, "--against", copies])


def test_files_that_cannot_be_compared_are_refused(files, tmp_path):
  originals, copies = files
  table = EmbeddingsFile.load(copies)
  other = str(tmp_path / "other_version.npz")
  EmbeddingsFile(
      table.embeddings,
      table.ids,
      table.labels,
      dict(table.meta, model_version=table.model_version + 1),
  ).save(other)
  with pytest.raises(
      SystemExit,
      match=(
          rf"--embeddings was embedded by model version {table.model_version + 1} and "
          rf"--against by model version {table.model_version}: .*not comparable"
      ),
  ):
    duplicates.main(["--embeddings", other, "--against", originals])
  narrow = str(tmp_path / "narrow.npz")
  EmbeddingsFile(table.embeddings[:, :8], table.ids, table.labels, table.meta).save(narrow)
  dim = table.embeddings.shape[1]
  with pytest.raises(
      SystemExit,
      match=rf"--embeddings has {dim}-dimensional embeddings and --against 8-dimensional ones",
  ):
    duplicates.main(["--embeddings", copies, "--against", narrow])
  with pytest.raises(SystemExit, match=r"--against .*missing\.npz: no such file"):
    duplicates.main(["--embeddings", copies, "--against", str(tmp_path / "missing.npz")])
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not an npz")
  with pytest.raises(SystemExit, match=r"--embeddings .*junk\.npz is not an embeddings file"):
    duplicates.main(["--embeddings", str(junk)])
  with pytest.raises(SystemExit, match=r"--against is the same file as --embeddings"):
    duplicates.main(["--embeddings", copies, "--against", copies])
  with pytest.raises(SystemExit, match=r"threshold 1\.5 is not a cosine similarity"):
    duplicates.main(["--embeddings", copies, "--threshold", "1.5"])
  with pytest.raises(SystemExit, match=r"max_per_item must be at least 1"):
    duplicates.main(["--embeddings", copies, "-k", "0"])
  assert sorted(os.listdir(tmp_path)) == ["junk.npz", "narrow.npz", "other_version.npz"]
  bad = EmbeddingsFile.load(copies)
  with pytest.raises(ValueError, match=r"duplicate_projection \(8, 4\) does not take the"):
    EmbeddingsFile(bad.embeddings, bad.ids, bad.labels, bad.meta, np.zeros((8, 4), np.float32))


def test_groups_hold_every_paired_image_once_around_its_first(files):
  """The duplicates review's groups (`corpus_groups`, as the server finds
  them over a search index) over originals and their JPEG copies as one
  corpus: every image of a pair in exactly one group, each joined by a pair
  at its score with the group's first or with an image that pairs with the
  first (groups do not chain), largest first; each JPEG copy with its
  original; the CSV has a row per grouped image."""
  from models import search_index

  a, b = (EmbeddingsFile.load(f) for f in files)
  records = search_index.Records(
      np.concatenate([a.ids, ["copy/" + i for i in b.ids]]), np.concatenate([a.labels, b.labels])
  )
  both = EmbeddingsFile(
      np.concatenate([a.embeddings, b.embeddings]),
      records.ids,
      records.class_names,
      a.meta,
      a.duplicate_projection,
  )
  threshold = duplicates.default_threshold(a)
  pairs = duplicates.find_pairs(both, threshold=threshold).pairs
  groups = duplicates.corpus_groups(
      both.embeddings, records, a.duplicate_projection, threshold, a.model_version
  )
  assert pairs and groups
  score = {frozenset((p.id_a, p.id_b)): p.score for p in pairs}
  group_of = {records.ids[row]: g for g, group in enumerate(groups) for row in group.rows}
  assert sum(len(g.rows) for g in groups) == len(group_of)  # an image is in one group
  assert set(group_of) == {i for p in pairs for i in (p.id_a, p.id_b)}
  for group in groups:
    first, *members = [records.ids[r] for r in group.rows]
    near_first = {m for m in members if frozenset((first, m)) in score}
    assert near_first, group
    for member, member_score in zip(members, group.scores[1:]):
      by = [o for o in [first, *near_first] if score.get(frozenset((member, o))) == member_score]
      assert by, (member, member_score, group)
    assert group.scores[0] == max(group.scores[1:])
    assert list(group.scores[1:]) == sorted(group.scores[1:], reverse=True)
  assert [len(g.rows) for g in groups] == sorted((len(g.rows) for g in groups), reverse=True)
  # The JPEG copies the pair test finds are grouped with their originals.
  copied = [p for p in pairs if p.id_b.startswith("copy/") and _stem(p.id_a) == _stem(p.id_b)]
  assert copied and all(group_of[p.id_a] == group_of[p.id_b] for p in copied)
  rows = list(csv.DictReader(duplicates.groups_text(groups, records).splitlines()))
  assert len(rows) == len(group_of)
  assert {r["id"]: int(r["group"]) - 1 for r in rows} == group_of
