"""The pipeline's Examples on disk: GZIP TFRecord files of serialized
tf.Example {image: encoded bytes, label: int64, class_name: bytes, and the
image's statistics (`ImageStatistics`)} (labeled splits) or {image and its
statistics} (an unlabeled split): ExampleGen's output format.

One reader for the Trainers' input pipelines, batch embedding and the
notebooks. TensorFlow only (no tf.Transform), so the serving side can use it.
"""

import hashlib
import os
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from models.names import (
    CHANNEL_MEAN_KEYS,
    CLASS_NAME_KEY,
    EMBEDDING_KEY,
    ID_KEY,
    SPAN_KEY,
    IMAGE_HEIGHT_KEY,
    IMAGE_KEY,
    IMAGE_PATH_KEY,
    IMAGE_WIDTH_KEY,
    LABEL_KEY,
    THUMBNAIL_KEY,
)

COMPRESSION = "GZIP"
# What counts as a TFRecord file of a data source (GZIP when it ends in .gz).
TFRECORD_SUFFIXES = (
    ".tfrecord",
    ".tfrecords",
    ".tfrec",
    ".tfrecord.gz",
    ".tfrecords.gz",
    ".tfrec.gz",
)


def tfrecord_files(folder: str) -> List[str]:
  """The visible TFRecord files directly in `folder` (local or gs://), sorted."""
  if not tf.io.gfile.isdir(folder):
    return []
  return sorted(
      f"{folder.rstrip('/')}/{name}"
      for name in tf.io.gfile.listdir(folder)
      if not name.startswith(".") and name.lower().endswith(TFRECORD_SUFFIXES)
  )


class ImageStatistics(NamedTuple):
  """What StatisticsGen sees of an image's pixels (`IMAGE_STATISTICS_KEYS`)."""

  height: int
  width: int
  channel_means: Tuple[float, float, float]  # R, G, B in [0, 255]

  @classmethod
  def of_array(cls, image: np.ndarray) -> "ImageStatistics":
    """Of a decoded RGB image, uint8 [H, W, 3]."""
    means = image.reshape(-1, image.shape[-1]).mean(axis=0)
    return cls(int(image.shape[0]), int(image.shape[1]), tuple(float(m) for m in means[:3]))


def image_example(
    image: Optional[bytes],
    label: Optional[int] = None,
    class_name: Optional[str] = None,
    image_path: Optional[str] = None,
    statistics: Optional[ImageStatistics] = None,
) -> tf.train.Example:
  """The tf.Example of one encoded image, with its class when labeled, its
  file when it came from one and its statistics when it was decoded (a
  feature that is None is left out)."""
  feature = {}
  if statistics is not None:
    for key, value in ((IMAGE_HEIGHT_KEY, statistics.height), (IMAGE_WIDTH_KEY, statistics.width)):
      feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    for key, value in zip(CHANNEL_MEAN_KEYS, statistics.channel_means):
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
  if image_path is not None:
    feature[IMAGE_PATH_KEY] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[image_path.encode("utf-8")])
    )
  if image is not None:
    feature[IMAGE_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
  if label is not None:
    feature[LABEL_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  if class_name is not None:
    feature[CLASS_NAME_KEY] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[class_name.encode("utf-8")])
    )
  return tf.train.Example(features=tf.train.Features(feature=feature))


def search_id(image_path: str, split: str, index: int) -> str:
  """The id search gives an example: its file (`IMAGE_PATH_KEY`, "" when it
  has none) when it came from one (image folders), else `<split>/<index>`,
  its position in the split's files in sorted order."""
  return image_path or f"{split}/{index}"


def example_files(file_patterns: List[str]) -> List[str]:
  """The files matching `file_patterns`, sorted; raises when there are none."""
  files = sorted(f for p in file_patterns for f in tf.io.gfile.glob(p))
  if not files:
    raise FileNotFoundError(f"No example files match {file_patterns}")
  return files


def files_digest(file_patterns: List[str]) -> str:
  """A digest of the contents of the files matching `file_patterns`: the
  same examples written by another run of ExampleGen give the same one."""
  h = hashlib.sha256()
  for path in example_files(file_patterns):
    h.update(os.path.basename(path).encode() + b"\0")
    with tf.io.gfile.GFile(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()[:16]


def serialized_examples(file_patterns: List[str], limit: Optional[int] = None) -> tf.data.Dataset:
  """The serialized tf.Examples of the files, in file order."""
  ds = tf.data.TFRecordDataset(example_files(file_patterns), compression_type=COMPRESSION)
  return ds.take(limit) if limit else ds


def embedding_example(
    image_id: str, class_name: str, vector: np.ndarray, span: str = "", thumbnail: bytes = b""
) -> tf.train.Example:
  """One record of a corpus's embeddings: {id, class_name ("" unknown),
  embedding, span ("" unknown)}, and the image's thumbnail (a JPEG,
  `models.thumbnails`) when it has one."""
  feature = {
      ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
      CLASS_NAME_KEY: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[class_name.encode("utf-8")])
      ),
      EMBEDDING_KEY: tf.train.Feature(
          float_list=tf.train.FloatList(value=np.asarray(vector, np.float32).ravel())
      ),
      SPAN_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[span.encode()])),
  }
  if thumbnail:
    feature[THUMBNAIL_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[thumbnail]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


class EmbeddingRecords(NamedTuple):
  """A corpus's embeddings read back (`read_embeddings`), in record order."""

  ids: List[str]
  class_names: List[str]
  vectors: np.ndarray  # [N, D] float32
  spans: List[str]  # "" where unknown (records written before spans were kept)
  thumbnails: List[bytes]  # JPEGs; b"" where a record has none


def _first_bytes(feature, key: str) -> bytes:
  """The first value of a record's bytes feature `key`; b"" when it has none."""
  values = feature[key].bytes_list.value if key in feature else []
  return values[0] if values else b""


def read_embeddings(file_patterns: List[str]) -> EmbeddingRecords:
  """The `embedding_example` records of the files, in file order."""
  ids, class_names, vectors, spans, thumbnails = [], [], [], [], []
  for record in serialized_examples(file_patterns):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    ids.append(feature[ID_KEY].bytes_list.value[0].decode())
    class_names.append(feature[CLASS_NAME_KEY].bytes_list.value[0].decode("utf-8"))
    vectors.append(np.asarray(feature[EMBEDDING_KEY].float_list.value, np.float32))
    spans.append(_first_bytes(feature, SPAN_KEY).decode())
    thumbnails.append(_first_bytes(feature, THUMBNAIL_KEY))
  return EmbeddingRecords(
      ids,
      class_names,
      np.stack(vectors) if vectors else np.zeros([0, 0], np.float32),
      spans,
      thumbnails,
  )


class ExampleRecords(NamedTuple):
  """Examples read into memory (`read_examples`), in record order."""

  serialized: List[bytes]  # [N] serialized tf.Example
  images: List[bytes]  # [N] encoded images (PNG, JPEG, ...)
  labels: np.ndarray  # [N] int64; -1 where an example has no label
  image_paths: List[str]  # [N] the image's file; "" where it has none

  def search_ids(self, split: str) -> List[str]:
    """The ids search gives these examples of `split` (`search_id`): they
    must be the split's from its first example on."""
    return [search_id(path, split, i) for i, path in enumerate(self.image_paths)]


def read_examples(file_patterns: List[str], limit: Optional[int] = None) -> ExampleRecords:
  """Reads (up to `limit`) examples into memory, with their images, labels
  and files."""
  serialized = [r.numpy() for r in serialized_examples(file_patterns, limit)]
  if not serialized:
    return ExampleRecords([], [], np.zeros([0], np.int64), [])
  spec = {
      IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
      LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      IMAGE_PATH_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
  }
  parsed = tf.io.parse_example(tf.constant(serialized), spec)
  return ExampleRecords(
      serialized,
      list(parsed[IMAGE_KEY].numpy()),
      parsed[LABEL_KEY].numpy(),
      [p.decode("utf-8") for p in parsed[IMAGE_PATH_KEY].numpy()],
  )
