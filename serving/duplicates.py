"""Near-duplicates: pairs of images whose embeddings are almost the same,
inside one corpus or between two (issue 25).

  python -m serving.duplicates --embeddings photos.npz --out pairs.tsv
  python -m serving.duplicates --embeddings cifar10_test.npz \
      --against cifar10_train.npz --out test_in_train.tsv [--threshold 0.85] [-k 10]

The files are embeddings files written by `python -m serving.embed`; two
files must come from the same model version (the embeddings of different
models are not comparable). Items are compared through the model's
near-duplicate projection when the files carry it (`models.near_duplicates`:
a view of the embedding under which re-compressed, rescaled and cropped
copies stay close), else on the embeddings themselves. A pair is two items
whose cosine similarity is at or above `--threshold` (default: the threshold
the model calibrated with its projection, saved in the file; for files
without one `DUPLICATE_THRESHOLD`, calibrated on altered copies of real
CIFAR-10 images against pairs of different images).
Each item's `--max-per-item` nearest neighbours at or above the threshold
are found exactly (`close_pairs`: every item compared with every other); a
pair is listed when either item has the other among its neighbours. Inside
one corpus an item is never paired with itself and each unordered pair is
listed once (id_a is the earlier row); between two corpora id_a is from
`--embeddings`, id_b from `--against`.

`--out` gets every pair, best first, with the columns id_a, class_a, id_b,
class_b, score: tab-separated, or comma-separated when the name ends in
.csv; it is written only when complete. The summary (pairs, items with a
duplicate) and the best `--show` pairs are printed.
"""

import argparse
import csv
import dataclasses
import io
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np

from models import search_index
from models.files import write_atomically
from serving.embeddings import EmbeddingsFile

# For embeddings files without a duplicate projection (older models), the
# cosine similarity at or above which two images are called
# near-duplicates: the lowest threshold at which at most 1 % of 2,000 real
# CIFAR-10 test images have a different image among them at or above it,
# calibrated on the `cpu` model by benchmarks/near_duplicates.py. The sweep,
# what the value finds (JPEG re-compressed and 2x copies, not 0.5x ones) and
# how it behaves on larger corpora: benchmarks/RESULTS.md, "Near-duplicates:
# the default threshold (issue 25)". Re-calibrate for another model.
DUPLICATE_THRESHOLD = 0.65
DEFAULT_MAX_PER_ITEM = 10
COLUMNS = ("id_a", "class_a", "id_b", "class_b", "score")


class BadInput(ValueError):
  """Files that cannot be compared: missing, unreadable, from different
  model versions or of different dimensions."""


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two near-duplicate items, by id and class name, and their similarity."""

  id_a: str
  class_a: str
  id_b: str
  class_b: str
  score: float  # cosine similarity


@dataclasses.dataclass
class Duplicates:
  """The pairs found, best first, and what was searched."""

  pairs: List[Pair]
  threshold: float
  max_per_item: int
  count_a: int  # items in the corpus (or the first corpus)
  count_b: Optional[int]  # items in the second corpus; None inside one

  def items_with_a_duplicate(self) -> Tuple[int, Optional[int]]:
    """(items of the first corpus in some pair, items of the second corpus
    in some pair: None inside one corpus, where both sides count)."""
    if self.count_b is None:
      return len({p.id_a for p in self.pairs} | {p.id_b for p in self.pairs}), None
    return len({p.id_a for p in self.pairs}), len({p.id_b for p in self.pairs})

  def summary(self) -> str:
    """One line: how many pairs, what was searched, how many items have a duplicate."""
    a, b = self.items_with_a_duplicate()
    searched = f"threshold {self.threshold:g}, up to {self.max_per_item} neighbours per item"
    if b is None:
      return (
          f"{len(self.pairs)} near-duplicate pairs inside {self.count_a} items "
          f"({searched}); items with a duplicate: {a} of {self.count_a} "
          f"({a / max(self.count_a, 1):.2%})"
      )
    return (
        f"{len(self.pairs)} near-duplicate pairs between {self.count_a} and "
        f"{self.count_b} items ({searched}); items with a duplicate: {a} of "
        f"{self.count_a} ({a / max(self.count_a, 1):.2%}) in the first, {b} of "
        f"{self.count_b} in the second"
    )


def load(path: str, flag: str) -> EmbeddingsFile:
  """The embeddings file at `path`; `BadInput` naming `flag` and the file
  when it is missing or not one."""
  if not os.path.isfile(path):
    raise BadInput(f"{flag} {path}: no such file")
  try:
    return EmbeddingsFile.load(path)
  except ValueError as e:
    raise BadInput(f"{flag} {e}") from e


def check_comparable(
    a: EmbeddingsFile, b: EmbeddingsFile, names: Tuple[str, str] = ("--embeddings", "--against")
) -> None:
  """Raises `BadInput` unless `a` and `b` come from one model version, have
  vectors of one dimension and both carry its duplicate projection or
  neither does."""
  if a.model_version != b.model_version:
    raise BadInput(
        f"{names[0]} was embedded by model version {a.model_version} and "
        f"{names[1]} by model version {b.model_version}: embeddings of "
        "different models are not comparable; embed both with one version"
    )
  if a.embeddings.shape[1] != b.embeddings.shape[1]:
    raise BadInput(
        f"{names[0]} has {a.embeddings.shape[1]}-dimensional embeddings and "
        f"{names[1]} {b.embeddings.shape[1]}-dimensional ones (both say model "
        f"version {a.model_version}): they cannot be compared"
    )
  if (a.duplicate_projection is None) != (b.duplicate_projection is None):
    with_projection = names[0] if a.duplicate_projection is not None else names[1]
    raise BadInput(
        f"only {with_projection} carries the model's duplicate projection (the other "
        "was written by an older serving.embed): re-embed it with this version"
    )


def default_threshold(a: EmbeddingsFile) -> float:
  """The threshold the model calibrated with its duplicate projection, else
  DUPLICATE_THRESHOLD."""
  return DUPLICATE_THRESHOLD if a.duplicate_threshold is None else a.duplicate_threshold


CHUNK_ROWS = 512  # query rows per matrix product: 512 x 50,000 float32 is 100 MB


def close_pairs(
    queries: np.ndarray, corpus: np.ndarray, k: int, threshold: float
) -> Iterator[Tuple[int, int, float]]:
  """(query row, corpus row, cosine) of each query's `k` nearest corpus rows
  at or above `threshold`, best first per query. Near-duplicates are rare:
  the rows that pass are found by comparing the similarities with the
  threshold, and only those ranked, instead of ranking every row."""
  queries, corpus = search_index.unit(queries), search_index.unit(corpus)
  for start in range(0, len(queries), CHUNK_ROWS):
    scores = queries[start : start + CHUNK_ROWS] @ corpus.T
    rows, cols = np.nonzero(scores >= threshold)  # row-major: each row's together
    firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else []
    for first, end in zip(firsts, [*firsts[1:], len(rows)]):
      row, candidates = rows[first], cols[first:end]
      found = scores[row, candidates]
      best = np.argsort(-found, kind="stable")[:k]
      for col, score in zip(candidates[best], found[best]):
        yield start + int(row), int(col), float(score)


def find_pairs(
    a: EmbeddingsFile,
    b: Optional[EmbeddingsFile] = None,
    threshold: Optional[float] = None,
    max_per_item: int = DEFAULT_MAX_PER_ITEM,
) -> Duplicates:
  """Near-duplicate pairs inside `a` (b None) or between `a` and `b`: two
  items with cosine similarity >= `threshold` (None: `default_threshold`)
  between their duplicate vectors (`EmbeddingsFile.duplicate_vectors`) where
  one is among the other's `max_per_item` nearest neighbours; best first.
  Inside one corpus no item is paired with itself and each unordered pair
  comes once (id_a the earlier row); between two, id_a is from `a` and id_b
  from `b`."""
  if threshold is None:
    threshold = default_threshold(a)
  if not -1.0 <= threshold <= 1.0:
    raise BadInput(f"threshold {threshold} is not a cosine similarity (-1 to 1)")
  if max_per_item < 1:
    raise BadInput(f"max_per_item must be at least 1, got {max_per_item}")
  best: Dict[Tuple[int, int], float] = {}

  def keep(key: Tuple[int, int], score: float) -> None:
    # Searched from both sides, a pair keeps its best score (exact search
    # gives the same one both ways, up to float rounding).
    best[key] = max(score, best.get(key, -1.0))

  a_vectors = a.duplicate_vectors()
  if b is None:
    # One more neighbour than asked: the item itself is (almost always) one.
    taken: Dict[int, int] = {}
    for row, other, score in close_pairs(a_vectors, a_vectors, max_per_item + 1, threshold):
      if other != row and taken.get(row, 0) < max_per_item:
        taken[row] = taken.get(row, 0) + 1
        keep((min(row, other), max(row, other)), score)
    second = a
  else:
    check_comparable(a, b)
    b_vectors = b.duplicate_vectors()
    for row, other, score in close_pairs(a_vectors, b_vectors, max_per_item, threshold):
      keep((row, other), score)
    # And the other way: an item of b whose neighbours in a include one
    # that does not have it among its own.
    for row, other, score in close_pairs(b_vectors, a_vectors, max_per_item, threshold):
      keep((other, row), score)
    second = b
  pairs = [
      Pair(str(a.ids[i]), str(a.labels[i]), str(second.ids[j]), str(second.labels[j]), score)
      for (i, j), score in best.items()
  ]
  pairs.sort(key=lambda p: (-p.score, p.id_a, p.id_b))
  return Duplicates(pairs, threshold, max_per_item, len(a.ids), None if b is None else len(b.ids))


@dataclasses.dataclass(frozen=True)
class Group:
  """An image (the first row) and its near-duplicates: each row with the
  score it joined the group by (the first's: its best with a member),
  best first after the first."""

  rows: Tuple[int, ...]
  scores: Tuple[float, ...]

  @property
  def score(self) -> float:
    """The group's best pair score."""
    return self.scores[0]


def groups_of(found: Duplicates, ids: Sequence[str]) -> List[Group]:
  """The pairs found inside one corpus (rows of `ids`) as groups, largest
  first, then best score, then first id. Pairs are taken best first: two
  images in no group start one around the first; an image pairing with a
  group's first joins it. Then an image left out (its near-duplicates all
  joined other groups) joins the group of its best partner. So every image
  with a near-duplicate is in one group, each at most two pairs from the
  group's first: groups of connected pairs would chain through thousands of
  images in a large corpus, where a threshold that flags 1 % of 2,000
  images flags many more."""
  row_of = {image_id: row for row, image_id in enumerate(ids)}
  pairs = [(row_of[p.id_a], row_of[p.id_b], p.score) for p in found.pairs]  # best first
  first_of: Dict[int, int] = {}  # row -> the first row of its group
  joined: Dict[int, List[Tuple[int, float]]] = {}  # first row -> [(row, score)]
  for a, b, score in pairs:
    if a not in first_of and b not in first_of:
      first_of[a] = first_of[b] = a
      joined[a] = [(b, score)]
    else:
      for first, other in ((a, b), (b, a)):
        if first_of.get(first) == first and other not in first_of:
          first_of[other] = first
          joined[first].append((other, score))
  placed = set(first_of)
  for a, b, score in pairs:  # the images left out, through their best partner
    for member, other in ((a, b), (b, a)):
      if member in placed and other not in first_of:
        first_of[other] = first_of[member]
        joined[first_of[member]].append((other, score))
  groups = []
  for first, members in joined.items():
    members.sort(key=lambda m: (-m[1], ids[m[0]]))
    groups.append(
        Group(
            (first,) + tuple(r for r, _ in members), (members[0][1],) + tuple(s for _, s in members)
        )
    )
  groups.sort(key=lambda g: (-len(g.rows), -g.score, ids[g.rows[0]]))
  return groups


def corpus_groups(
    vectors: np.ndarray,
    records: search_index.Records,
    projection: Optional[np.ndarray],
    threshold: float,
    model_version: int,
    max_per_item: int = DEFAULT_MAX_PER_ITEM,
) -> List[Group]:
  """The near-duplicate groups inside a search index's corpus (its
  `vectors` [N, D] and `records`), compared through `projection` as
  `find_pairs` compares an embeddings file."""
  table = EmbeddingsFile(
      np.asarray(vectors, np.float32),
      records.ids,
      records.class_names,
      {"model_version": model_version, "duplicate_threshold": threshold},
      projection,
  )
  return groups_of(find_pairs(table, threshold=threshold, max_per_item=max_per_item), records.ids)


GROUP_COLUMNS = ("group", "id", "class_name", "span", "score")


def groups_text(groups: List[Group], records: search_index.Records, delimiter: str = ",") -> str:
  """The groups as a table (GROUP_COLUMNS, a row per image, groups numbered
  from 1 in order), scores to 6 places."""
  buf = io.StringIO()
  writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
  writer.writerow(GROUP_COLUMNS)
  for number, group in enumerate(groups, 1):
    for row, score in zip(group.rows, group.scores):
      writer.writerow(
          [
              number,
              records.ids[row],
              records.class_names[row],
              records.spans[row],
              f"{score:.6f}",
          ]
      )
  return buf.getvalue()


def pairs_text(pairs: List[Pair], delimiter: str = "\t") -> str:
  """The pairs as a table with a header row (COLUMNS), scores to 6 places."""
  buf = io.StringIO()
  writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
  writer.writerow(COLUMNS)
  for p in pairs:
    writer.writerow([p.id_a, p.class_a, p.id_b, p.class_b, f"{p.score:.6f}"])
  return buf.getvalue()


def write_pairs(path: str, pairs: List[Pair]) -> None:
  """Writes the pairs to `path` atomically: comma-separated for .csv, else
  tab-separated."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  write_atomically(path, pairs_text(pairs, "," if path.lower().endswith(".csv") else "\t"))


def main(argv=None) -> Duplicates:
  """Finds the pairs the flags ask for, writes them to --out and prints the
  summary and the best of them; returns them."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
      "--embeddings",
      required=True,
      help="embeddings file (`python -m serving.embed`): the corpus searched",
  )
  p.add_argument(
      "--against",
      default=None,
      help="a second embeddings file of the same model version: pairs between "
      "the two instead of inside --embeddings",
  )
  p.add_argument(
      "--threshold",
      type=float,
      default=None,
      help="cosine similarity at or above which two items are a pair (default: "
      "the model's calibrated threshold, in the file; for files without one "
      f"{DUPLICATE_THRESHOLD}: benchmarks/RESULTS.md)",
  )
  p.add_argument(
      "-k",
      "--max-per-item",
      type=int,
      default=DEFAULT_MAX_PER_ITEM,
      help="nearest neighbours searched per item (default %(default)s)",
  )
  p.add_argument("--out", default=None, help="file for every pair (.tsv, or .csv for commas)")
  p.add_argument("--show", type=int, default=10, help="best pairs printed (default %(default)s)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  try:
    a = load(args.embeddings, "--embeddings")
    b = None
    if args.against is not None:
      if os.path.realpath(args.against) == os.path.realpath(args.embeddings):
        raise BadInput(
            "--against is the same file as --embeddings: leave --against out "
            "to find the pairs inside one corpus"
        )
      b = load(args.against, "--against")
    found = find_pairs(a, b, args.threshold, args.max_per_item)
  except BadInput as e:
    raise SystemExit(f"serving.duplicates: {e}") from e
  if args.out:
    write_pairs(args.out, found.pairs)
  print(
      f"serving.duplicates: {found.summary()}" + (f" -> {args.out}" if args.out else ""), flush=True
  )
  for pair in found.pairs[: args.show]:
    print(
        f"  {pair.score:.4f}  {pair.id_a} ({pair.class_a or '?'})  "
        f"{pair.id_b} ({pair.class_b or '?'})"
    )
  if len(found.pairs) > args.show > 0:
    print(
        f"  ... {len(found.pairs) - args.show} more"
        + (f" in {args.out}" if args.out else " (--out writes them all)")
    )
  return found


if __name__ == "__main__":
  main()
