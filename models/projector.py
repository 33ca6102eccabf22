"""TensorBoard's Embedding Projector files for a corpus's embeddings: a
capped sample of the vectors as a checkpoint variable, `metadata.tsv` (id,
class, span), a square sprite of the images, and `projector_config.pbtxt`,
in one folder that `tensorboard --logdir` reads.

  folder/
    embedding.ckpt-1.*       the sampled vectors [n, D], variable `embedding`
    checkpoint               names it, relative to the folder (it can move)
    metadata.tsv             a header row, then one row a vector, in order
    sprite.png               the images, row by row, n cells of cell x cell px
    projector_config.pbtxt   ties them together
    events.out.tfevents.*    a note on what was sampled (`mark_run`)

The pipeline's Pusher writes them for a search index it pushed
(`publish`): the index's vectors and records, its thumbnails as the sprite.
"""

import io
import math
import os
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np

from models import search_index
from models.names import STAGING_PREFIX
from models.thumbnails import ThumbnailStore

SPRITE_MAX_PX = 8192  # the largest sprite TensorBoard's projector loads
CELL_MAX_PX = 32  # CIFAR-10's own size: no image is enlarged past it
TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # tf.train.Checkpoint(embedding=...)
CONFIG_FILE = "projector_config.pbtxt"  # the name TensorBoard's projector reads


def sample_rows(count: int, max_points: int, seed: int = 0) -> np.ndarray:
  """At most `max_points` of `count` rows, sorted, the same for the same seed."""
  if count <= max_points:
    return np.arange(count)
  return np.sort(np.random.default_rng(seed).choice(count, max_points, replace=False))


def sprite(images: Sequence[np.ndarray]) -> np.ndarray:
  """[H, W, 3] uint8: the images resized to one square cell each (aspect
  kept, padded black), row by row on a square grid no wider than
  SPRITE_MAX_PX; empty cells black."""
  from PIL import Image, ImageOps

  grid = max(1, math.ceil(math.sqrt(len(images))))
  cell = min(CELL_MAX_PX, SPRITE_MAX_PX // grid)
  if cell < 1:
    raise ValueError(f"{len(images)} images do not fit a {SPRITE_MAX_PX} px sprite")
  sheet = np.zeros([grid * cell, grid * cell, 3], np.uint8)
  for i, image in enumerate(images):
    row, col = divmod(i, grid)
    rgb = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    small = ImageOps.pad(rgb, (cell, cell), color=(0, 0, 0))
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
  # The rows first: `vectors` may be a memory-mapped index of millions.
  checkpoint = tf.train.Checkpoint(embedding=tf.Variable(np.asarray(vectors[rows], np.float32)))
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
  projector.visualize_embeddings(folder, config)  # writes CONFIG_FILE
  return dict(points=len(rows), dim=int(vectors.shape[1]), sprite_cell=cell, rows=rows.tolist())


def _cell(value: str) -> str:
  """A metadata cell: tabs and newlines would break the TSV's rows."""
  return str(value).replace("\t", " ").replace("\n", " ") or "-"


def read_metadata(folder: str) -> List[List[str]]:
  """The metadata rows (header first), as TensorBoard splits them."""
  with open(os.path.join(folder, "metadata.tsv"), encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]


class _DecodedThumbnails:
  """A thumbnail store read as images by row, each decoded when asked for
  (a sample of 10,000 from millions decodes 10,000); a row without a
  thumbnail is a black pixel, so its cell stays black."""

  def __init__(self, store: ThumbnailStore):
    self._store = store

  def __getitem__(self, row: int) -> np.ndarray:
    from PIL import Image

    jpeg = self._store[row]
    if not jpeg:
      return np.zeros([1, 1, 3], np.uint8)
    with Image.open(io.BytesIO(jpeg)) as image:
      return np.asarray(image.convert("RGB"))


def write_index(folder: str, index_dir: str, max_points: int, title: str) -> Dict:
  """Writes the projector files of the search index saved in `index_dir`
  (`models.search_index`: its vectors and records; its thumbnails, when it
  carries them, as the sprite) into `folder`, a TensorBoard run noting
  `title` and what was sampled. Returns `write`'s summary, with the index's
  size (`total`) and whether it has a sprite."""
  records = search_index.read_records(index_dir)
  vectors = search_index.read_vectors(index_dir)
  if vectors is None:
    raise ValueError(
        f"{index_dir} keeps no {search_index.VECTORS}: an index saved before "
        "indexes kept their vectors has none to project"
    )
  store = ThumbnailStore.load(index_dir, len(vectors))
  written = write(
      folder,
      vectors,
      records.ids,
      records.class_names,
      records.spans,
      None if store is None else _DecodedThumbnails(store),
      max_points,
  )
  written.update(total=len(vectors), sprite=store is not None)
  mark_run(folder, f"{title}: {describe(written)}")
  return written


def describe(written: Dict) -> str:
  """What `write_index` wrote, in a few words."""
  sample = (
      f"all {written['total']:,} vectors"
      if written["points"] == written["total"]
      else f"{written['points']:,} of {written['total']:,} vectors, drawn at random"
  )
  sprite = "with a sprite of their thumbnails" if written["sprite"] else "no thumbnails, no sprite"
  return f"{sample} ({written['dim']}-d), {sprite}"


def mark_run(folder: str, note: str) -> None:
  """Makes `folder` a TensorBoard run, an events file holding `note` (the
  Text tab shows it): TensorBoard's projector reads projector_config.pbtxt
  only in the logdir itself and in its runs' folders."""
  import tensorflow as tf

  writer = tf.summary.create_file_writer(folder)
  with writer.as_default():
    tf.summary.text("projector", note, step=0)
  writer.close()


def publish(root: str, version: str, index_dir: str, max_points: int, title: str) -> Dict:
  """Writes the projector of the index in `index_dir` (`write_index`) to
  `root/<version>/` through a staging folder, then removes every other
  folder of `root` (an older version's, one a killed write left): TensorBoard
  shows the newest push's projector, never a half-written one. Returns
  `write_index`'s summary, with the `folder` written."""
  os.makedirs(root, exist_ok=True)
  staging = os.path.join(root, f"{STAGING_PREFIX}{version}-{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  written = write_index(staging, index_dir, max_points, title)
  folder = os.path.join(root, version)
  if os.path.isdir(folder):  # the same version again (a re-run that pushed nothing new)
    shutil.rmtree(folder)
  os.rename(staging, folder)
  for name in os.listdir(root):
    if name != version:
      shutil.rmtree(os.path.join(root, name))
  return dict(written, folder=folder)
