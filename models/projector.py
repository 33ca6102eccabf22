"""TensorBoard's Embedding Projector files for a corpus's embeddings: a
capped sample of the vectors as a checkpoint variable, `metadata.tsv` (id,
class, span), a square sprite of the images, and `projector_config.pbtxt`,
in one folder that `tensorboard --logdir` reads.

  folder/
    embedding.ckpt-1.*       the sampled vectors [n, D], variable `embedding`
    metadata.tsv             a header row, then one row a vector, in order
    sprite.png               the images, row by row, n cells of cell x cell px
    projector_config.pbtxt   ties them together
"""

import io
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

SPRITE_MAX_PX = 8192  # the largest sprite TensorBoard's projector loads
CELL_MAX_PX = 32  # CIFAR-10's own size: no image is enlarged past it
TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # tf.train.Checkpoint(embedding=...)


def sample_rows(count: int, max_points: int, seed: int = 0) -> np.ndarray:
  """At most `max_points` of `count` rows, sorted, the same for the same seed."""
  if count <= max_points:
    return np.arange(count)
  return np.sort(np.random.default_rng(seed).choice(count, max_points, replace=False))


def sprite(images: Sequence[np.ndarray]) -> np.ndarray:
  """[H, W, 3] uint8: the images resized to one square cell each, row by
  row on a square grid no wider than SPRITE_MAX_PX; empty cells black."""
  from PIL import Image

  grid = max(1, math.ceil(math.sqrt(len(images))))
  cell = min(CELL_MAX_PX, SPRITE_MAX_PX // grid)
  if cell < 1:
    raise ValueError(f"{len(images)} images do not fit a {SPRITE_MAX_PX} px sprite")
  sheet = np.zeros([grid * cell, grid * cell, 3], np.uint8)
  for i, image in enumerate(images):
    row, col = divmod(i, grid)
    small = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize((cell, cell))
    sheet[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = np.asarray(small)
  return sheet


def write(
    folder: str,
    vectors: np.ndarray,
    ids: Sequence[str],
    class_names: Sequence[str],
    spans: Optional[Sequence[str]] = None,
    images: Optional[Sequence[np.ndarray]] = None,
    max_points: int = 10_000,
    seed: int = 0,
) -> Dict:
  """Writes the projector files of (a sample of at most `max_points` of) the
  vectors into `folder`; with `images` (decoded [H, W, 3], row for row), a
  sprite. Returns what was written: {points, dim, sprite_cell, rows}."""
  import tensorflow as tf
  from PIL import Image
  from tensorboard.plugins import projector

  if not len(vectors) == len(ids) == len(class_names):
    raise ValueError(f"{len(vectors)} vectors, {len(ids)} ids, {len(class_names)} class names")
  rows = sample_rows(len(vectors), max_points, seed)
  spans = list(spans) if spans is not None else [""] * len(ids)
  os.makedirs(folder, exist_ok=True)
  checkpoint = tf.train.Checkpoint(embedding=tf.Variable(np.asarray(vectors, np.float32)[rows]))
  checkpoint.save(os.path.join(folder, "embedding.ckpt"))
  with open(os.path.join(folder, "metadata.tsv"), "w", encoding="utf-8") as f:
    f.write("id\tclass\tspan\n")
    for r in rows:
      f.write("\t".join(_cell(v) for v in (ids[r], class_names[r], spans[r])) + "\n")
  config = projector.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = TENSOR_NAME
  embedding.metadata_path = "metadata.tsv"
  cell = 0
  if images is not None:
    sheet = sprite([images[r] for r in rows])
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    with open(os.path.join(folder, "sprite.png"), "wb") as f:
      f.write(buffer.getvalue())
    cell = sheet.shape[0] // max(1, math.ceil(math.sqrt(len(rows))))
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend([cell, cell])
  projector.visualize_embeddings(folder, config)
  return dict(points=len(rows), dim=int(vectors.shape[1]), sprite_cell=cell, rows=rows.tolist())


def _cell(value: str) -> str:
  """A metadata cell: tabs and newlines would break the TSV's rows."""
  return str(value).replace("\t", " ").replace("\n", " ") or "-"


def read_metadata(folder: str) -> List[List[str]]:
  """The metadata rows (header first), as TensorBoard splits them."""
  with open(os.path.join(folder, "metadata.tsv"), encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]
