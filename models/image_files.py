"""Image files on disk or GCS: which files are images, how a folder is laid
out, which split a file belongs to, and reading one image safely.

Layouts of a labeled folder (`detect_layout`):

  class folders   <root>/<class>/<image>            split by `hash_split` of the
                                                    path relative to <root>
  split folders   <root>/train/<class>/<image>      splits as given
                  <root>/test/<class>/<image>

Class ids are the positions of the class names (folder names) in sorted
order, taken from the train split's folders; a class found only in the test
split gets an id past them, so the schema's label domain flags it.

A source laid out in spans (`span_folders`) holds one such layout (or
TFRecord files) per span: <root>/span-<N>/..., TFX's {SPAN} convention.

An unlabeled folder is any tree of images (`list_images(root, recursive=True)`).
Hidden files and folders and files without an image extension
(`.DS_Store`, `README.txt`) are not images and are ignored. A file with an
image extension that does not decode completely raises `BadImageError`,
naming the file. No TFX types here: the ExampleGen component is the adapter.
"""

import dataclasses
import hashlib
import io
import os
import posixpath
import re
from typing import Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf

from models.examples import ImageStatistics
from models.names import CLASS_NAMES_FILE, REMOVED_FILE, SPAN_FOLDER_PREFIX

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_FOLDERS = ("train", "test")
CLASS_FOLDERS, SPLIT_FOLDERS_LAYOUT = "class_folders", "split_folders"
# Kept as they are: TensorFlow's decoders read these modes of PNG and JPEG.
_NATIVE = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB")}


class BadImageError(ValueError):
  """A file with an image extension that is not a complete, readable image."""


def join_path(root: str, *parts: str) -> str:
  """`root` joined with `parts`: by '/' under a URL (gs://...), else the OS's way."""
  return posixpath.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def _visible(name: str) -> bool:
  return not name.rstrip("/").startswith(".")


def is_image_file(name: str) -> bool:
  """A visible file with one of IMAGE_EXTENSIONS (any case)."""
  base = os.path.basename(name)
  return _visible(base) and base.lower().endswith(IMAGE_EXTENSIONS)


def _subfolders(root: str) -> List[str]:
  return sorted(
      e.rstrip("/")
      for e in tf.io.gfile.listdir(root)
      if _visible(e) and tf.io.gfile.isdir(join_path(root, e.rstrip("/")))
  )


def list_images(root: str, recursive: bool = False) -> List[str]:
  """Image files directly in `root` (or anywhere below it), sorted; paths
  relative to `root`, '/'-separated. Hidden folders are skipped."""
  if not recursive:
    return sorted(
        e
        for e in tf.io.gfile.listdir(root)
        if is_image_file(e) and not tf.io.gfile.isdir(join_path(root, e))
    )
  found = []
  prefix = root.rstrip("/")
  for folder, dirs, files in tf.io.gfile.walk(root):
    dirs[:] = [d for d in dirs if _visible(d)]
    rel = folder.rstrip("/")[len(prefix) :].replace(os.sep, "/").strip("/")
    if any(not _visible(part) for part in rel.split("/") if part):
      continue
    found += [f"{rel}/{f}" if rel else f for f in files if is_image_file(f)]
  return sorted(found)


def hash_split(key: str, test_fraction: float) -> str:
  """'train' or 'test' for a file, from a hash of its path relative to the
  dataset root (or another stable key): the same on every run and machine,
  and a file keeps its split when others are added."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  position = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
  return "test" if position < test_fraction else "train"


@dataclasses.dataclass
class FolderLayout:
  """What a labeled image folder holds: per split, (relative path, class id)."""

  root: str
  kind: str  # CLASS_FOLDERS | SPLIT_FOLDERS_LAYOUT
  class_names: List[str]  # id -> name (train's classes first)
  files: Dict[str, List[Tuple[str, int]]]  # split -> [(relative path, class id)]

  def counts(self) -> Dict[str, int]:
    """{split: number of files}."""
    return {split: len(files) for split, files in self.files.items()}


def detect_layout(root: str, test_fraction: float = 0.2) -> FolderLayout:
  """Reads the class folders of `root` (see the module doc); raises
  ValueError naming the folder when it holds no class folder of images."""
  if not tf.io.gfile.isdir(root):
    raise ValueError(f"{root}: not a folder")
  top = _subfolders(root)
  if len(set(SPLIT_FOLDERS) & set(top)) == 1:
    raise ValueError(
        f"{root}: has {'train' if 'train' in top else 'test'}/ but no "
        f"{'test' if 'train' in top else 'train'}/: give both split folders, "
        "or class folders directly under the root to split by hash"
    )
  if set(SPLIT_FOLDERS) <= set(top):
    per_split = {
        s: {c: list_images(join_path(root, s, c)) for c in _subfolders(join_path(root, s))}
        for s in SPLIT_FOLDERS
    }
    train_classes = sorted(c for c, f in per_split["train"].items() if f)
    extra = sorted(set(c for c, f in per_split["test"].items() if f) - set(train_classes))
    class_names = train_classes + extra
    ids = {c: i for i, c in enumerate(class_names)}
    files = {
        s: [(f"{s}/{c}/{f}", ids[c]) for c, fs in sorted(per_split[s].items()) for f in fs]
        for s in SPLIT_FOLDERS
    }
    kind = SPLIT_FOLDERS_LAYOUT
  else:
    per_class = {c: list_images(join_path(root, c)) for c in top}
    class_names = sorted(c for c, f in per_class.items() if f)
    if not 0.0 < test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    files = {s: [] for s in SPLIT_FOLDERS}
    for i, c in enumerate(class_names):
      for f in per_class[c]:
        rel = f"{c}/{f}"
        files[hash_split(rel, test_fraction)].append((rel, i))
    kind = CLASS_FOLDERS
  if not class_names:
    raise ValueError(
        f"{root}: no class folder holds images ({', '.join(IMAGE_EXTENSIONS)}); "
        "expected <root>/<class>/<image> or <root>/train|test/<class>/<image>"
    )
  return FolderLayout(root, kind, class_names, files)


def read_image(path: str) -> "CheckedImage":
  """The image file at `path`, checked (`check_image`); raises BadImageError
  naming the file when it is empty, truncated or not an image."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return check_image(f.read(), path)


class CheckedImage(NamedTuple):
  """An image as `check_image` passes it on: the bytes to store, and its statistics."""

  data: bytes  # what to store: bytes TensorFlow decodes
  statistics: ImageStatistics  # its size and channel means


def check_image(data: bytes, name: str) -> CheckedImage:
  """`data` itself when it is a PNG or JPEG TensorFlow decodes as it is,
  otherwise (BMP, GIF's first frame, CMYK JPEG, ...) the image converted to
  RGB(A) and re-encoded as lossless PNG; with the decoded image's
  statistics. Raises BadImageError with `name` (the file, or the record)
  when the bytes are empty, truncated or not an image."""
  from PIL import Image, ImageStat, UnidentifiedImageError

  if not data:
    raise BadImageError(f"{name}: empty file")
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # decodes every byte: truncation is found here
      if img.width < 1 or img.height < 1:
        raise BadImageError(f"{name}: image of size {img.size}")
      # RGB(A) as it is: convert would copy every pixel of a large photo.
      rgb = (
          img
          if img.mode in ("RGB", "RGBA")
          else img.convert("RGBA" if "A" in img.getbands() else "RGB")
      )
      statistics = ImageStatistics(img.height, img.width, tuple(ImageStat.Stat(rgb).mean[:3]))
      if img.mode in _NATIVE.get(img.format, ()) and getattr(img, "n_frames", 1) == 1:
        return CheckedImage(data, statistics)
      out = io.BytesIO()
      rgb.save(out, format="PNG")
      return CheckedImage(out.getvalue(), statistics)
  except BadImageError:
    raise
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise BadImageError(f"{name}: not a readable image ({type(e).__name__}: {e})") from e


def folder_label(rel: str) -> str:
  """The label of an image at `rel` ('/'-separated) under a folder laid out
  as `<root>/<label>/.../<image>`: its first folder; "" at the root."""
  return rel.split("/")[0] if "/" in rel else ""


def read_class_names_file(root: str) -> List[str]:
  """The lines of `<root>/class_names.txt` (line i names class i), or [] when
  there is none (a TFRecord dataset's optional names)."""
  path = join_path(root, CLASS_NAMES_FILE)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [line.strip() for line in f.read().splitlines() if line.strip()]


def folder_fingerprint(root: Optional[str]) -> str:
  """A digest of the visible files under `root` (paths, sizes, mtimes), so a
  cached ingestion re-runs when one changes; '' for none or a remote root."""
  if not root or "://" in root:
    return ""
  h = hashlib.sha256()
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if _visible(d))
    for name in sorted(f for f in files if _visible(f)):
      if folder == root and name == REMOVED_FILE:
        continue  # a removal changes the index, not the data (docs/continuous.md)
      st = os.stat(os.path.join(folder, name))
      rel = os.path.relpath(os.path.join(folder, name), root)
      h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


_SPAN_FOLDER = re.compile(re.escape(SPAN_FOLDER_PREFIX) + r"(\d+)")


def span_folders(root: str) -> Dict[int, str]:
  """{span number: folder name} of the `span-<N>` folders directly in `root`
  (local or gs://); empty when the source is not laid out in spans."""
  if not tf.io.gfile.isdir(root):
    return {}
  spans: Dict[int, str] = {}
  for name in _subfolders(root):
    match = _SPAN_FOLDER.fullmatch(name)
    if match:
      span = int(match.group(1))
      if span in spans:
        raise ValueError(f"{root}: span {span} is in two folders, {spans[span]} and {name}")
      spans[span] = name
  return spans


def span_root(root: str, span: int) -> str:
  """The folder of one span of a span layout; raises naming the spans there
  when it has no such span."""
  spans = span_folders(root)
  if span not in spans:
    raise ValueError(
        f"{root}: no span {span} (spans there: {sorted(spans) or 'none'}; "
        f"a span is a folder {SPAN_FOLDER_PREFIX}<N>)"
    )
  return join_path(root, spans[span])
