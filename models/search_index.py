"""Nearest-neighbour search over embeddings by cosine similarity: exact, ScaNN
(the library behind Vertex AI Vector Search) or faiss HNSW, behind one
interface: build, save, load, search, and evaluation against exact search.

A library without TFX types: the pipeline's index component, the server and
benchmarks/search.py use it alike. Vectors are L2-normalised on the way in,
so a score is the cosine similarity of query and neighbour (1: same direction).

An index is a folder, relocatable (the Pusher copies it into a model version):

  index.json      kind, dim, count, parameters, why this kind, its evaluation
  records.npz     ids [N], class names [N] and spans [N] ("" where unknown), row order
  vectors.npy     the unit vectors [N, D]: exact search scans them (float32);
                  the other kinds keep a float16 copy (scores within ~1e-3)
                  for queries by id, filtered scans and the next index that
                  reuses them
  scann/          scann: ScaNN's serialized searcher (asset paths relative)
  faiss.index     faiss_hnsw: faiss's HNSW graph with its vectors
  removed.txt     ids taken out of search for good (`removed`), one a line
  thumbnails.bin, thumbnail_offsets.npy
                  the pipeline's small JPEG of each record's image, beside
                  the index (`models.thumbnails`; none with search.thumbnail_px 0)

Filters follow Vertex AI Vector Search's token restricts (`Restricts`): a
search with filters returns the k nearest records that pass, not the k
nearest filtered afterwards.
"""

import dataclasses
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from models.config import SearchConfig
from models.vector_search import CLASS_NAMESPACE, NAMESPACES, SPAN_NAMESPACE

EXACT, SCANN, FAISS_HNSW = "exact", "scann", "faiss_hnsw"
MANIFEST, RECORDS, VECTORS, REMOVED = "index.json", "records.npz", "vectors.npy", "removed.txt"
_EXACT_CHUNK = 256  # queries per matrix product in exact search
# A filtered search scans the vectors that pass when there are at most this
# many (about 60 ms a query at 640 dimensions on 2 cores), and otherwise asks
# the index for more candidates until k of them pass.
FILTERED_SCAN_MAX = 100_000
# The shares of records a filter may pass that a ScaNN index is tuned for:
# the k nearest of a tenth of the records lie about 10x deeper than the k
# nearest of all, in partitions a search tuned for the k nearest skips.
FILTER_TUNE_SHARES = (0.5, 0.25, 0.125, 1 / 16, 1 / 32, 1 / 64, 1 / 128)


class BadIndex(ValueError):
  """An index folder that cannot be loaded: missing, partial or corrupt."""


def unit(vectors: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, D] float32 rows of length 1 (zero rows stay zero)."""
  vectors = np.asarray(vectors, np.float32)
  if vectors.ndim != 2:
    raise ValueError(f"expected a [N, D] array of vectors, got shape {vectors.shape}")
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  return vectors / np.maximum(norms, 1e-12)


@dataclasses.dataclass
class Records:
  """What each indexed vector stands for, in row order."""

  ids: np.ndarray  # [N] str: a path under the data root, or split/index
  class_names: np.ndarray  # [N] str, "" where unknown
  spans: Optional[np.ndarray] = None  # [N] str: the span the image came in, "" unknown

  def __post_init__(self):
    self.ids = np.asarray(self.ids).astype(str)
    self.class_names = np.asarray(self.class_names).astype(str)
    if self.spans is None:
      self.spans = np.full(len(self.ids), "")
    self.spans = np.asarray(self.spans).astype(str)
    if not len(self.ids) == len(self.class_names) == len(self.spans):
      raise ValueError(
          f"{len(self.ids)} ids but {len(self.class_names)} class names and "
          f"{len(self.spans)} spans"
      )

  def hit(self, row: int, score: float) -> Dict:
    """Record `row` found at `score`, as the search routes return it."""
    return {
        "id": str(self.ids[row]),
        "class_name": str(self.class_names[row]),
        "span": str(self.spans[row]),
        "score": float(score),
    }

  def namespace(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(the distinct tokens [T] str, each record's token as an index into
    them [N]) of the filter namespace `name`: computed once, so a filtered
    search costs one integer lookup a record, not string comparisons."""
    cache = self.__dict__.setdefault("_namespaces", {})
    if name not in cache:
      tokens = {CLASS_NAMESPACE: self.class_names, SPAN_NAMESPACE: self.spans}[name]
      cache[name] = np.unique(tokens, return_inverse=True)
    return cache[name]


class BadRestricts(ValueError):
  """A filter that names an unknown namespace or is not shaped as Vector Search's."""


@dataclasses.dataclass
class Restricts:
  """Vertex AI Vector Search's token restricts over the records' namespaces
  (`class`, `span`): a record passes when, in every namespace restricted,
  its token is in the `allow` list (when there is one) and not in the
  `deny` list; namespaces AND, tokens within one OR. A record without a
  token in a namespace (an unlabeled image's class) passes no allow list
  there."""

  rules: List[Tuple[str, frozenset, frozenset]]  # (namespace, allow, deny)

  @classmethod
  def parse(cls, value, field: str = "restricts") -> "Restricts":
    """[{"namespace": "class", "allow": [...], "deny": [...]}, ...] -> Restricts;
    BadRestricts naming the entry and what is wrong."""
    if not isinstance(value, list):
      raise BadRestricts(f"'{field}' must be a list of {{namespace, allow, deny}} objects")
    rules = []
    for i, entry in enumerate(value):
      where = f"{field}[{i}]"
      if not isinstance(entry, dict) or "namespace" not in entry:
        raise BadRestricts(f'{where}: expected {{"namespace": ..., "allow"|"deny": [...]}}')
      unknown = set(entry) - {"namespace", "allow", "deny"}
      if unknown:
        raise BadRestricts(
            f"{where}: unknown field(s) {sorted(unknown)}; expected namespace, allow, deny"
        )
      namespace = entry["namespace"]
      if namespace not in NAMESPACES:
        raise BadRestricts(
            f"{where}: unknown namespace {namespace!r}; expected one of {list(NAMESPACES)}"
        )
      lists = []
      for key in ("allow", "deny"):
        tokens = entry.get(key, [])
        if not isinstance(tokens, list) or not all(isinstance(t, (str, int)) for t in tokens):
          raise BadRestricts(f"{where}.{key} must be a list of strings, got {tokens!r:.60}")
        lists.append(frozenset(str(t) for t in tokens))
      if not lists[0] and not lists[1]:
        raise BadRestricts(f"{where}: give 'allow' or 'deny' tokens for namespace {namespace!r}")
      rules.append((namespace, *lists))
    return cls(rules)

  def mask(self, records: Records) -> np.ndarray:
    """[N] bool: the records that pass."""
    keep = np.ones(len(records.ids), bool)
    for namespace, allow, deny in self.rules:
      tokens, of_record = records.namespace(namespace)
      passing = np.ones(len(tokens), bool)  # per distinct token
      if allow:
        passing &= np.isin(tokens, list(allow)) & (tokens != "")
      if deny:
        passing &= ~np.isin(tokens, list(deny))
      keep &= passing[of_record]
    return keep


def _top_k(sims: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """(scores [q, k], columns [q, k]) of each row's k largest of `sims` [q,
  N], best first: a partial sort, then a sort of the k."""
  top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  top_sims = np.take_along_axis(sims, top, axis=1)
  order = np.argsort(-top_sims, axis=1, kind="stable")
  return np.take_along_axis(top_sims, order, axis=1), np.take_along_axis(top, order, axis=1)


# ---- the kinds ------------------------------------------------------------------
class _Searcher:
  """[Q, D] unit queries -> (scores [Q, k] cosine, rows [Q, k]), best first.
  `share`: the share of the records a filter passes, when the candidates
  asked for are to be filtered; a searcher may look further for them."""

  kind = ""

  def search(
      self, queries: np.ndarray, k: int, share: float = 1.0
  ) -> Tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def save(self, folder: str) -> None:
    raise NotImplementedError


class _Exact(_Searcher):
  kind = EXACT

  def __init__(self, vectors: np.ndarray):
    self.vectors = vectors

  def search(self, queries, k, share=1.0):
    k = min(k, len(self.vectors))
    scores, rows = [], []
    for start in range(0, len(queries), _EXACT_CHUNK):
      top_sims, top = _top_k(queries[start : start + _EXACT_CHUNK] @ self.vectors.T, k)
      rows.append(top)
      scores.append(top_sims)
    return np.concatenate(scores), np.concatenate(rows)

  def save(self, folder):
    np.save(os.path.join(folder, "vectors.npy"), self.vectors)

  @classmethod
  def load(cls, folder):
    return cls(np.load(os.path.join(folder, "vectors.npy")))


class _Scann(_Searcher):
  """A partition tree with anisotropic quantization, top candidates
  re-scored from a float32, bfloat16 or int8 copy of the vectors: the
  scores returned are the cosines to that copy. A search for candidates to
  filter searches the partitions tuned for the share that passes."""

  kind = SCANN
  FOLDER = "scann"

  def __init__(
      self,
      searcher,
      leaves_to_search: int,
      reorder: int = 0,
      num_leaves: int = 0,
      filtered_leaves: Optional[Dict[float, int]] = None,
  ):
    self.searcher = searcher
    self.leaves_to_search = leaves_to_search
    self.reorder = reorder  # candidates re-scored; a search for more re-scores more
    self.num_leaves = num_leaves
    # {share of FILTER_TUNE_SHARES: partitions to search}; empty in indexes
    # built before filtered search was tuned (they search leaves_to_search).
    self.filtered_leaves = dict(filtered_leaves or {})

  def leaves_for(self, share: float) -> int:
    """The partitions to search for candidates a filter passing `share` of
    the records will keep: those tuned for the largest share at most it
    (a harder case), all of them below the smallest share tuned."""
    if share >= 1.0 or not self.filtered_leaves:
      return self.leaves_to_search
    tuned = [s for s in self.filtered_leaves if s <= share]
    return self.filtered_leaves[max(tuned)] if tuned else self.num_leaves

  @classmethod
  def build(
      cls,
      vectors: np.ndarray,
      num_leaves: int,
      reorder: int,
      k: int,
      reorder_dtype: str = "float32",
  ):
    from scann.scann_ops.py import scann_ops_pybind
    from scann.scann_ops.py.scann_builder import ReorderType

    leaves = max(2, min(num_leaves, len(vectors) // 10))
    searcher = (
        scann_ops_pybind.builder(vectors, k, "dot_product")
        .tree(
            num_leaves=leaves,
            num_leaves_to_search=max(1, leaves // 10),
            training_sample_size=min(len(vectors), 250_000),
        )
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(reorder, quantize=getattr(ReorderType, reorder_dtype.upper()))
        .build()
    )
    return cls(searcher, max(1, leaves // 10), reorder, leaves), leaves

  def search(self, queries, k, share=1.0):
    # Candidates for a filter passing a share of the records are re-scored
    # as deep as the unfiltered search re-scores for all of them.
    reorder = int(math.ceil(self.reorder / max(share, 1e-9)))
    rows, scores = self.searcher.search_batched(
        queries,
        final_num_neighbors=k,
        leaves_to_search=self.leaves_for(share),
        pre_reorder_num_neighbors=max(k, reorder) if self.reorder else None,
    )
    return np.asarray(scores, np.float32), np.asarray(rows, np.int64)

  def save(self, folder):
    target = os.path.join(folder, self.FOLDER)
    os.makedirs(target)
    self.searcher.serialize(target)
    # ScaNN writes absolute asset paths; keep only the names, so the folder
    # can move (the Pusher copies it into the model's version folder).
    path = os.path.join(target, "scann_assets.pbtxt")
    with open(path) as f:
      text = f.read()
    with open(path, "w") as f:
      f.write(
          re.sub(
              r'asset_path: "([^"]*)"',
              lambda m: f'asset_path: "{os.path.basename(m.group(1))}"',
              text,
          )
      )

  @classmethod
  def load(cls, folder, params: Dict):
    """The searcher saved in `folder`, searched as index.json's `params` say."""
    from scann.scann_ops.py import scann_ops_pybind

    source = os.path.abspath(os.path.join(folder, cls.FOLDER))
    with open(os.path.join(source, "scann_assets.pbtxt")) as f:
      assets = re.sub(
          r'asset_path: "([^"]*)"',
          lambda m: f'asset_path: "{os.path.join(source, m.group(1))}"',
          f.read(),
      )
    searcher = scann_ops_pybind.ScannSearcher(
        scann_ops_pybind.scann_pybind.ScannNumpy(source, assets)
    )
    return cls(
        searcher,
        int(params["leaves_to_search"]),
        int(params.get("reorder", 0)),
        int(params.get("num_leaves", 0)),
        {float(s): int(v) for s, v in params.get("filtered_leaves_to_search", {}).items()},
    )


class _FaissHnsw(_Searcher):
  """faiss's HNSW graph on inner product (= cosine on unit vectors)."""

  kind = FAISS_HNSW
  FILE = "faiss.index"

  def __init__(self, index, ef_search: int):
    self.index = index
    self.ef_search = ef_search

  @classmethod
  def build(cls, vectors: np.ndarray, links: int = 32, ef_construction: int = 80):
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(vectors)
    return cls(index, 64)

  def search(self, queries, k, share=1.0):
    # The graph search keeps ef_search candidates: asking for more widens it.
    self.index.hnsw.efSearch = max(self.ef_search, k)
    scores, rows = self.index.search(queries, k)
    return scores.astype(np.float32), rows.astype(np.int64)

  def save(self, folder):
    import faiss

    faiss.write_index(self.index, os.path.join(folder, self.FILE))

  @classmethod
  def load(cls, folder, ef_search: int):
    import faiss

    return cls(faiss.read_index(os.path.join(folder, cls.FILE)), ef_search)


# ---- the index ------------------------------------------------------------------
@dataclasses.dataclass
class SearchIndex:
  """Records, the searcher over their vectors, and what was built and why."""

  searcher: _Searcher
  records: Records
  info: Dict  # index.json: kind, dim, count, params, reason, evaluation
  # [N, D] unit float32 (memory-mapped when loaded); None in indexes saved
  # before every kind kept them (no queries by id nor scanned filters there).
  vectors: Optional[np.ndarray] = None
  removed: List[str] = dataclasses.field(default_factory=list)  # ids out of search for good

  def __post_init__(self):
    if self.vectors is None and isinstance(self.searcher, _Exact):
      self.vectors = self.searcher.vectors
    self._rows: Optional[Dict[str, int]] = None

  @property
  def kind(self) -> str:
    """The searcher's kind: exact, scann or faiss_hnsw."""
    return self.searcher.kind

  def __len__(self) -> int:
    return len(self.records.ids)

  def rows_of(self, ids: List[str]) -> List[int]:
    """The record rows of `ids`; KeyError listing those the index lacks."""
    if self._rows is None:
      self._rows = {image_id: row for row, image_id in enumerate(self.records.ids)}
    missing = [i for i in ids if i not in self._rows]
    if missing:
      raise KeyError(missing)
    return [self._rows[i] for i in ids]

  def neighbours(
      self,
      queries: np.ndarray,
      k: int,
      passing: Optional[np.ndarray] = None,
      exclude: Optional[np.ndarray] = None,
  ) -> Tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k'] cosine, rows [Q, k'] of `records`), best first,
    k' = min(k, len(self)); a row of -1 is no neighbour (a graph search
    may find fewer than k, a filter may pass fewer). `passing` ([N] bool):
    only those records, the k nearest of them; `exclude` ([Q] rows, -1
    none): leave that record out of its query's results."""
    if k < 1:
      raise ValueError(f"k must be at least 1, got {k}")
    queries = unit(queries)
    if queries.shape[1] != self.info["dim"]:
      raise ValueError(f"queries have {queries.shape[1]} dimensions, the index {self.info['dim']}")
    if passing is None and exclude is None:
      scores, rows = self.searcher.search(queries, min(k, len(self)))
      return np.minimum(scores, 1.0), rows  # float rounding may pass 1
    filtered = passing is not None
    if passing is None:
      passing = np.ones(len(self), bool)
    if exclude is None:
      exclude = np.full(len(queries), -1)
    count = int(passing.sum())
    # A filter scans what passes when that is few enough; a query that only
    # leaves its own record out asks the index for one more instead.
    if filtered and self.vectors is not None and (self.kind == EXACT or count <= FILTERED_SCAN_MAX):
      scores, rows = self._scan(queries, k, np.flatnonzero(passing), exclude)
    else:
      scores, rows = self._oversample(queries, k, passing, exclude, count)
    return np.minimum(scores, 1.0), rows

  def _scan(self, queries, k, candidates, exclude):
    """Exact search over the `candidates` rows: the k nearest that pass."""
    scores = np.full([len(queries), k], -np.inf, np.float32)
    rows = np.full([len(queries), k], -1, np.int64)
    if not len(candidates):
      return scores, rows
    vectors = np.asarray(self.vectors[candidates], np.float32)  # [M, D]
    for start in range(0, len(queries), _EXACT_CHUNK):
      sims = queries[start : start + _EXACT_CHUNK] @ vectors.T  # [q, M]
      own = candidates[None, :] == exclude[start : start + _EXACT_CHUNK, None]
      sims[own] = -np.inf
      top = min(k, len(candidates))
      best_sims, best = _top_k(sims, top)
      found = np.isfinite(best_sims)
      end = start + len(best)
      rows[start:end, :top] = np.where(found, candidates[best], -1)
      scores[start:end, :top] = np.where(found, best_sims, -np.inf)
    return scores, rows

  def _oversample(self, queries, k, passing, exclude, count):
    """The index's own search for more candidates (k over the share that
    passes, twice over, doubled up to 3 times; a ScaNN index searches the
    partitions tuned for that share) until each query has k that pass;
    then, if some still lack them, a scan of the passing vectors (an
    approximate index need not find a query's 100th neighbour)."""
    fetch = oversample_fetch(k, count, len(self))
    excluded_passes = (exclude >= 0) & passing[np.maximum(exclude, 0)]
    wanted = np.minimum(k, count - excluded_passes)  # [Q]
    for attempt in range(4):
      all_scores, all_rows = self.searcher.search(queries, fetch, count / len(self))
      scores, rows = keep_passing(all_scores, all_rows, k, passing, exclude)
      if np.all((rows >= 0).sum(1) >= wanted):
        return scores, rows
      if attempt == 3 or fetch >= len(self):
        break
      fetch = min(len(self), fetch * 2)
    if self.vectors is None:
      return scores, rows  # an index saved without its vectors: what was found
    return self._scan(queries, k, np.flatnonzero(passing), exclude)

  def search(
      self,
      queries: np.ndarray,
      k: int,
      threshold: Optional[float] = None,
      restricts: Optional["Restricts"] = None,
      exclude: Optional[np.ndarray] = None,
  ) -> List[List[Dict]]:
    """For each query: its k nearest records, best first, as {id,
    class_name, span, score}; with `threshold`, only those scoring at least
    it; with `restricts`, the k nearest that pass them; `exclude` as in
    `neighbours` (a query by id leaves its own record out)."""
    passing = restricts.mask(self.records) if restricts is not None else None
    scores, rows = self.neighbours(queries, k, passing, exclude)
    return [
        [
            self.records.hit(row, score)
            for score, row in zip(query_scores, query_rows)
            if row >= 0 and (threshold is None or score >= threshold)
        ]
        for query_scores, query_rows in zip(scores, rows)
    ]

  def save(self, folder: str) -> None:
    """Writes the index to `folder` (which must not exist) through a
    temporary folder beside it, renamed into place when complete."""
    if os.path.exists(folder):
      raise FileExistsError(f"{folder} exists; an index is written once")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".index-")
    try:
      self.searcher.save(tmp)
      if self.kind != EXACT and self.vectors is not None:
        np.save(os.path.join(tmp, VECTORS), np.asarray(self.vectors, np.float16))
      np.savez(
          os.path.join(tmp, RECORDS),
          ids=self.records.ids,
          class_names=self.records.class_names,
          spans=self.records.spans,
      )
      with open(os.path.join(tmp, REMOVED), "w") as f:
        f.writelines(f"{i}\n" for i in sorted(self.removed))
      with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(self.info, f, indent=2, sort_keys=True, default=float)
      os.rename(tmp, folder)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise


def load(folder: str) -> SearchIndex:
  """The index saved in `folder`; a missing, partial or corrupt one raises
  `BadIndex` naming the folder and what is wrong."""
  try:
    with open(os.path.join(folder, MANIFEST)) as f:
      info = json.load(f)
    records = read_records(folder)
    kind = info["kind"]
    if kind == EXACT:
      searcher = _Exact.load(folder)
    elif kind == SCANN:
      searcher = _Scann.load(folder, info["params"])
    elif kind == FAISS_HNSW:
      searcher = _FaissHnsw.load(folder, int(info["params"]["ef_search"]))
    else:
      raise ValueError(f"unknown kind {kind!r}")
  except Exception as e:  # pylint: disable=broad-except
    raise BadIndex(
        f"{folder}: not a readable search index ({type(e).__name__}: {str(e).strip()[:300]})"
    ) from e
  if len(records.ids) != info.get("count"):
    raise BadIndex(f"{folder}: {len(records.ids)} records but index.json says {info.get('count')}")
  vectors = read_vectors(folder) if kind != EXACT else None  # exact: the searcher's
  return SearchIndex(searcher, records, info, vectors, read_removed(folder))


def read_records(folder: str) -> Records:
  """The records of the index saved in `folder` (no spans before they were
  kept), local or on any filesystem TensorFlow reads (gs://)."""
  import tensorflow as tf

  with tf.io.gfile.GFile(os.path.join(folder, RECORDS), "rb") as f:
    data = io.BytesIO(f.read())
  with np.load(data, allow_pickle=False) as f:
    return Records(f["ids"], f["class_names"], f["spans"] if "spans" in f else None)


def read_vectors(folder: str) -> Optional[np.ndarray]:
  """The unit vectors of the index saved in `folder`, memory-mapped, without
  loading its searcher (None for an index saved before every kind kept them)."""
  path = os.path.join(folder, VECTORS)
  return np.load(path, mmap_mode="r") if os.path.exists(path) else None


def read_removed(folder: str) -> List[str]:
  """The ids an index folder lists as removed for good ([] when none)."""
  import tensorflow as tf

  path = os.path.join(folder, REMOVED)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [line.strip() for line in f if line.strip()]


def exact_index(vectors: np.ndarray, records: Records, **info) -> SearchIndex:
  """Exact search over `vectors`, unevaluated (recall 1 by construction):
  for an ad-hoc corpus."""
  vectors = unit(vectors)
  if len(vectors) != len(records.ids):
    raise ValueError(f"{len(vectors)} vectors but {len(records.ids)} records")
  return SearchIndex(
      _Exact(vectors),
      records,
      dict(
          kind=EXACT,
          reason="an ad-hoc corpus: exact search",
          dim=int(vectors.shape[1]),
          count=len(vectors),
          params={},
          **info,
      ),
  )


def exact_neighbours(
    vectors: np.ndarray, queries: np.ndarray, k: int
) -> Tuple[np.ndarray, np.ndarray]:
  """(scores, rows) of exact cosine search: the reference recall is against."""
  return _Exact(unit(vectors)).search(unit(queries), k)


def oversample_fetch(k: int, count: int, total: int) -> int:
  """Candidates to ask an index of `total` records for when a filter passes
  `count` of them: about twice k + 1 (a query by id may find itself) pass."""
  return min(total, int(math.ceil((k + 1) * total / max(count, 1) * 2)))


def keep_passing(
    all_scores: np.ndarray, all_rows: np.ndarray, k: int, passing: np.ndarray, exclude: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
  """The first k candidates of each query ([Q, fetch] scores and rows, best
  first) that pass and are not its `exclude` row: (scores [Q, k], rows [Q,
  k]), -inf and -1 where fewer are left."""
  scores = np.full([len(all_rows), k], -np.inf, np.float32)
  rows = np.full([len(all_rows), k], -1, np.int64)
  for q, (q_scores, q_rows) in enumerate(zip(all_scores, all_rows)):
    # ScaNN pads a short answer by repeating a row: keep first occurrences.
    first = np.zeros(len(q_rows), bool)
    first[np.unique(q_rows, return_index=True)[1]] = True
    ok = first & (q_rows >= 0) & (q_rows != exclude[q]) & np.isfinite(q_scores)
    ok[ok] &= passing[q_rows[ok]]
    kept = np.flatnonzero(ok)[:k]
    rows[q, : len(kept)], scores[q, : len(kept)] = q_rows[kept], q_scores[kept]
  return scores, rows


def query_recalls(found_rows: np.ndarray, true_rows: np.ndarray) -> np.ndarray:
  """Per query, the share of its true k nearest that the search returned."""
  k = true_rows.shape[1]
  return np.array([len(set(f[:k]) & set(t)) / k for f, t in zip(found_rows, true_rows)])


def recall_at_k(found_rows: np.ndarray, true_rows: np.ndarray) -> float:
  """The share of the true k nearest that the search returned, averaged."""
  return float(np.mean(query_recalls(found_rows, true_rows)))


# Standard errors the tuning recall must clear min_recall by: a setting that
# only just reaches it on the tuning queries misses it on the held-out ones
# about half the time (one-sided, 2 SE ~ 98 %).
TUNE_MARGIN_STANDARD_ERRORS = 2.0


def measure(
    searcher: _Searcher,
    queries: np.ndarray,
    true_rows: np.ndarray,
    k: int,
    single_queries: int = 200,
) -> Dict[str, float]:
  """recall@k against `true_rows`, p50/p99 single-query latency (ms) and
  batch queries per second, of unit `queries`."""
  start = time.perf_counter()
  _, rows = searcher.search(queries, k)
  batch_seconds = time.perf_counter() - start
  latencies = []
  for query in queries[:single_queries]:
    start = time.perf_counter()
    searcher.search(query[None], k)
    latencies.append((time.perf_counter() - start) * 1e3)
  return dict(
      recall_at_k=recall_at_k(rows, true_rows),
      k=k,
      queries=len(queries),
      p50_ms=float(np.percentile(latencies, 50)),
      p99_ms=float(np.percentile(latencies, 99)),
      batch_qps=len(queries) / batch_seconds,
  )


def _cheapest(values: List[int], recalls_of: Callable[[int], np.ndarray], min_recall: float) -> int:
  """The first of `values` (cheapest first) whose per-query recalls clear
  `min_recall` by TUNE_MARGIN_STANDARD_ERRORS standard errors of their
  mean, else the last."""
  for value in values:
    recalls = recalls_of(value)
    standard_error = recalls.std(ddof=1) / math.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
    if recalls.mean() - TUNE_MARGIN_STANDARD_ERRORS * standard_error >= min_recall:
      return value
  return values[-1]


def _tune(
    searcher: _Searcher,
    knob: str,
    values: List[int],
    queries: np.ndarray,
    true_rows: np.ndarray,
    k: int,
    min_recall: float,
) -> None:
  """Sets the searcher's `knob` to the cheapest of `values` whose recall@k
  on `queries` reaches `min_recall` (`_cheapest`)."""

  def recalls_of(value):
    setattr(searcher, knob, value)
    return query_recalls(searcher.search(queries, k)[1], true_rows)

  setattr(searcher, knob, _cheapest(values, recalls_of, min_recall))


def _exact_passing(
    vectors: np.ndarray, queries: np.ndarray, k: int, masks: List[np.ndarray]
) -> List[np.ndarray]:
  """For each [N] bool mask, the rows [Q, k] of the k nearest passing
  vectors of each query, by brute force in one pass over the vectors."""
  found = [[] for _ in masks]
  for start in range(0, len(queries), 64):
    sims = queries[start : start + 64] @ vectors.T  # [q, N]
    for rows, mask in zip(found, masks):
      rows.append(_top_k(np.where(mask, sims, -np.inf), k)[1])
  return [np.concatenate(rows) for rows in found]


def _tune_filtered(
    searcher: _Scann,
    values: List[int],
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    min_recall: float,
) -> Dict[float, int]:
  """{share: partitions} for the filtered search of each of
  FILTER_TUNE_SHARES: the cheapest of `values` at which the k nearest
  passing a random filter of that share, found as a filtered search finds
  them (oversample_fetch candidates, then keep_passing), reach `min_recall`
  on `queries` (`_cheapest`), until one needs every partition. Random
  filters are the hard case: a filter on class keeps more of a query's own
  neighbourhood."""
  rng = np.random.default_rng(0)
  shares = [s for s in FILTER_TUNE_SHARES if s * len(vectors) >= 2 * k]
  masks = [rng.random(len(vectors)) < share for share in shares]
  truths = _exact_passing(vectors, queries, k, masks)
  exclude = np.full(len(queries), -1)
  cheapest = values.index(searcher.leaves_to_search)  # a smaller share needs no fewer
  for share, mask, true_rows in zip(shares, masks, truths):
    fetch = oversample_fetch(k, int(mask.sum()), len(vectors))

    def recalls_of(value, share=share, mask=mask, true_rows=true_rows, fetch=fetch):
      searcher.filtered_leaves[share] = value
      scores, rows = searcher.search(queries, fetch, share)
      return query_recalls(keep_passing(scores, rows, k, mask, exclude)[1], true_rows)

    searcher.filtered_leaves[share] = _cheapest(values[cheapest:], recalls_of, min_recall)
    cheapest = values.index(searcher.filtered_leaves[share])
    if cheapest == len(values) - 1:
      break  # every partition already: so for the smaller shares (`leaves_for`)
  return dict(searcher.filtered_leaves)


def choose_kind(count: int, cfg: SearchConfig) -> Tuple[str, str]:
  """(kind, why) for a corpus of `count` vectors."""
  if cfg.kind != "auto":
    return cfg.kind, f"search.kind is {cfg.kind}"
  if count < cfg.exact_below:
    return EXACT, (
        f"{count} vectors < search.exact_below {cfg.exact_below}: exact "
        "search is fast enough and has recall 1"
    )
  return SCANN, (
      f"{count} vectors >= search.exact_below {cfg.exact_below}: ScaNN, "
      "the fewest partitions searched that reach search.min_recall"
  )


def build(
    vectors: np.ndarray, records: Records, cfg: SearchConfig, queries: np.ndarray, **info
) -> SearchIndex:
  """The index `cfg` asks for over `vectors` (rows of `records`), tuned on
  the first `cfg.tune_queries` of the held-out `queries` and scored on the
  next `cfg.eval_queries` against exact search (too few for both: tuned on
  the first half, scored on the rest): its info holds the kind, why, the
  parameters and the evaluation (recall@k on both sets, latency, QPS)."""
  vectors, queries = unit(vectors), unit(queries)
  if len(queries) >= cfg.tune_queries + cfg.eval_queries:
    tune_set = queries[: cfg.tune_queries]
    queries = queries[cfg.tune_queries : cfg.tune_queries + cfg.eval_queries]
  elif len(queries) >= 2:
    tune_set, queries = queries[: len(queries) // 2], queries[len(queries) // 2 :]
  else:
    tune_set = queries
  if len(vectors) != len(records.ids):
    raise ValueError(f"{len(vectors)} vectors but {len(records.ids)} records")
  if not len(vectors):
    raise ValueError("no vectors to index")
  kind, reason = choose_kind(len(vectors), cfg)
  k = min(cfg.k, len(vectors))
  _, true_rows = _Exact(vectors).search(queries, k)
  _, tune_true_rows = _Exact(vectors).search(tune_set, k)
  start = time.perf_counter()
  params: Dict = {}
  if kind == EXACT:
    searcher: _Searcher = _Exact(vectors)
  elif kind == SCANN:
    target = cfg.num_leaves or int(round(math.sqrt(len(vectors))))
    searcher, leaves = _Scann.build(vectors, target, cfg.reorder, k, cfg.reorder_dtype)
    # The fewest partitions per query that reach the recall asked for, for
    # all records and for the k nearest of a share of them.
    values = sorted(
        {
            max(1, int(round(leaves * share)))
            for share in (0.02, 0.03, 0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.4, 0.6, 1.0)
        }
    )
    _tune(searcher, "leaves_to_search", values, tune_set, tune_true_rows, k, cfg.min_recall)
    filtered = _tune_filtered(searcher, values, vectors, tune_set, k, cfg.min_recall)
    params = dict(
        num_leaves=leaves,
        reorder=cfg.reorder,
        reorder_dtype=cfg.reorder_dtype,
        leaves_to_search=searcher.leaves_to_search,
        filtered_leaves_to_search={str(share): n for share, n in filtered.items()},
    )
  elif kind == FAISS_HNSW:
    searcher = _FaissHnsw.build(vectors)
    _tune(
        searcher, "ef_search", [32, 64, 128, 256, 512], tune_set, tune_true_rows, k, cfg.min_recall
    )
    params = dict(links=32, ef_construction=80, ef_search=searcher.ef_search)
  else:
    raise ValueError(f"Unknown index kind {kind!r}")
  build_seconds = time.perf_counter() - start
  evaluation = measure(searcher, queries, true_rows, k)
  evaluation["tune_queries"] = len(tune_set)
  evaluation["tune_recall_at_k"] = recall_at_k(searcher.search(tune_set, k)[1], tune_true_rows)
  evaluation["build_seconds"] = build_seconds
  evaluation["blessed"] = evaluation["recall_at_k"] >= cfg.min_recall
  evaluation["min_recall"] = cfg.min_recall
  return SearchIndex(
      searcher,
      records,
      dict(
          kind=kind,
          reason=reason,
          dim=int(vectors.shape[1]),
          count=len(vectors),
          params=params,
          evaluation=evaluation,
          **info,
      ),
      vectors=vectors,
  )


def describe(index: SearchIndex) -> str:
  """One line: what was built, why, and how it scored."""
  e = index.info["evaluation"]
  # Indexes built before the tuning set was its own have no tune_* figures.
  tuned = (
      f"; tuned on {e['tune_queries']} others: recall {e['tune_recall_at_k']:.4f}"
      if "tune_queries" in e
      else ""
  )
  return (
      f"{index.kind} index of {index.info['count']} x {index.info['dim']} "
      f"({index.info['reason']}): recall@{e['k']} {e['recall_at_k']:.4f} on "
      f"{e['queries']} held-out queries (min {e['min_recall']}{tuned}), p50 "
      f"{e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, {e['batch_qps']:.0f} queries/s "
      f"in a batch, built in {e['build_seconds']:.1f} s"
  )
