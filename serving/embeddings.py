"""Embeddings files and nearest-neighbour search over them.

An embeddings file is one `.npz`: `embeddings` float32 [N, D], `ids` [N]
(file paths relative to the embedded folder, or for pipeline examples the
ids the pushed index gives, `models.examples.search_id`), `labels` [N]
(class names; "" when unknown), `meta` (JSON: model path and version,
signature, when; `duplicate_threshold` when the model has one) and, when the
model has near-duplicate search's projection (`models.near_duplicates`),
`duplicate_projection` float32 [D, k]: `serving.duplicates` compares the
rows `embeddings @ duplicate_projection`. The model version matters: a query must be embedded by the
same model as the file, so the search CLI and the server's `:neighbors`
endpoint use the version recorded here.

`EmbeddingsFile.index` searches it exactly (`models.search_index`), as an
ad-hoc corpus; a pushed version may carry its own index instead
(`names.SEARCH_INDEX_DIR`, served by `:neighbors` without `--index`).
"""

import dataclasses
import io
import json
import os
from typing import Dict, Optional

import numpy as np

from models import near_duplicates, search_index
from models.files import write_atomically


@dataclasses.dataclass
class EmbeddingsFile:
  """An embeddings file (the module docstring's format), its rows lined up."""

  embeddings: np.ndarray  # [N, D] float32
  ids: np.ndarray  # [N] str
  labels: np.ndarray  # [N] str
  meta: Dict
  duplicate_projection: Optional[np.ndarray] = None  # [D, k]

  def __post_init__(self):
    n = len(self.embeddings)
    if self.embeddings.ndim != 2 or len(self.ids) != n or len(self.labels) != n:
      raise ValueError(
          f"embeddings {self.embeddings.shape}, {len(self.ids)} ids and "
          f"{len(self.labels)} labels do not line up"
      )
    projection = self.duplicate_projection
    if projection is not None and (
        projection.ndim != 2 or projection.shape[0] != self.embeddings.shape[1]
    ):
      raise ValueError(
          f"duplicate_projection {projection.shape} does not take the "
          f"{self.embeddings.shape[1]}-dimensional embeddings"
      )

  @property
  def model_version(self) -> int:
    """The version that embedded the file: queries must be embedded by it too."""
    return int(self.meta["model_version"])

  @property
  def duplicate_threshold(self) -> Optional[float]:
    """The cosine similarity the model calibrated for near-duplicates (None:
    a model without a duplicate projection)."""
    value = self.meta.get("duplicate_threshold")
    return None if value is None else float(value)

  def duplicate_vectors(self) -> np.ndarray:
    """[N, k] what near-duplicate search compares: the embeddings through the
    duplicate projection, or the embeddings themselves without one."""
    if self.duplicate_projection is None:
      return self.embeddings
    return near_duplicates.project(self.embeddings, self.duplicate_projection)

  def save(self, path: str) -> None:
    """Writes `path` atomically (`models.files.write_atomically`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    extra = {}
    if self.duplicate_projection is not None:
      extra["duplicate_projection"] = np.asarray(self.duplicate_projection, np.float32)
    np.savez(
        buf,
        embeddings=self.embeddings.astype(np.float32),
        ids=self.ids.astype(str),
        labels=self.labels.astype(str),
        meta=np.array(json.dumps(self.meta, sort_keys=True)),
        **extra,
    )
    write_atomically(path, buf.getvalue())

  def index(self) -> search_index.SearchIndex:
    """Exact cosine search over the file's embeddings."""
    return search_index.exact_index(
        self.embeddings,
        search_index.Records(self.ids, self.labels),
        model_version=self.model_version,
    )

  @classmethod
  def load(cls, path: str) -> "EmbeddingsFile":
    """Reads `path`; ValueError naming it when it is not an embeddings file."""
    try:
      with np.load(path, allow_pickle=False) as f:
        return cls(
            f["embeddings"],
            f["ids"],
            f["labels"],
            json.loads(str(f["meta"])),
            f["duplicate_projection"] if "duplicate_projection" in f.files else None,
        )
    except (KeyError, ValueError, OSError) as e:
      raise ValueError(
          f"{path} is not an embeddings file written by `python -m serving.embed`: {e}"
      ) from e
