"""Embeddings files and nearest-neighbour search over them.

An embeddings file is one `.npz`: `embeddings` float32 [N, D], `ids` [N]
(file paths relative to the embedded folder, or `<split>/<index>` for
pipeline examples), `labels` [N] (class names; "" when unknown) and `meta`
(JSON: model path and version, signature, when). The model version matters:
a query must be embedded by the same model as the file, so the search CLI and
the server's `:neighbors` endpoint use the version recorded here.

Search is exact cosine k-NN with scikit-learn's `NearestNeighbors` (brute
force, BLAS matrix products): see docs/serving.md "Similarity search" for why.
"""

import dataclasses
import io
import json
import os
from typing import Dict, List

import numpy as np
from sklearn.neighbors import NearestNeighbors

from models.files import write_atomically


@dataclasses.dataclass
class EmbeddingsFile:
  embeddings: np.ndarray     # [N, D] float32
  ids: np.ndarray            # [N] str
  labels: np.ndarray         # [N] str
  meta: Dict

  def __post_init__(self):
    n = len(self.embeddings)
    if self.embeddings.ndim != 2 or len(self.ids) != n or len(self.labels) != n:
      raise ValueError(f"embeddings {self.embeddings.shape}, {len(self.ids)} ids and "
                       f"{len(self.labels)} labels do not line up")

  @property
  def model_version(self) -> int:
    return int(self.meta["model_version"])

  def save(self, path: str) -> None:
    """Writes `path` atomically (`models.files.write_atomically`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, embeddings=self.embeddings.astype(np.float32),
             ids=self.ids.astype(str), labels=self.labels.astype(str),
             meta=np.array(json.dumps(self.meta, sort_keys=True)))
    write_atomically(path, buf.getvalue())

  @classmethod
  def load(cls, path: str) -> "EmbeddingsFile":
    try:
      with np.load(path, allow_pickle=False) as f:
        return cls(f["embeddings"], f["ids"], f["labels"], json.loads(str(f["meta"])))
    except (KeyError, ValueError, OSError) as e:
      raise ValueError(f"{path} is not an embeddings file written by "
                       f"`python -m serving.embed`: {e}") from e


class NeighbourIndex:
  """Exact cosine nearest neighbours of query embeddings in a file."""

  def __init__(self, table: EmbeddingsFile):
    self.table = table
    self._nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(table.embeddings)

  def query(self, queries: np.ndarray, k: int) -> List[List[Dict]]:
    """For each query [Q, D]: its k nearest entries, nearest first, as
    {id, label, distance} (cosine distance = 1 - cosine similarity)."""
    if k < 1:
      raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, len(self.table.ids))
    distances, indices = self._nn.kneighbors(np.asarray(queries, np.float32), k)
    return [[{"id": str(self.table.ids[i]), "label": str(self.table.labels[i]),
              "distance": float(d)} for d, i in zip(row_d, row_i)]
            for row_d, row_i in zip(distances, indices)]
