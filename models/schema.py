"""The dataset schema: what ExampleValidator holds every split to, and the
class name <-> id mapping of the dataset.

CIFAR-10's schema is curated (`schemas/schema.pbtxt`). For other data the
pipeline writes one once from the dataset's classes (`dataset_schema`) to a
file the user reviews and checks in (TFX's recommended flow); later runs
import it. In both, the `class_name` feature's string domain lists the class
names in id order: the `label` of an example is the position of its class
name there (`class_names`), which is how the probe Trainer learns the number
of classes and the names the served model returns.
"""

from typing import List

from tensorflow_metadata.proto.v0 import schema_pb2

from models.names import (
    CHANNEL_MEAN_KEYS,
    CLASS_NAME_KEY,
    IMAGE_HEIGHT_KEY,
    IMAGE_KEY,
    IMAGE_PATH_KEY,
    IMAGE_WIDTH_KEY,
    LABEL_KEY,
)

TRAINING, SERVING = "TRAINING", "SERVING"
# Drift between a span and the one before it (ExampleValidator's comparators,
# applied by the AnomaliesGate): the largest change of a class's share of the
# train split, and the Jensen-Shannon divergence of the histograms of the
# images' size and channel means. Calibrated on CIFAR-10 split into spans
# (benchmarks/RESULTS.md, "Spans"): equal random spans stay far below.
CLASS_DRIFT_LINF = 0.1
IMAGE_STATISTICS_DRIFT_JS = 0.05


def _required(feature: schema_pb2.Feature) -> schema_pb2.Feature:
  feature.presence.min_fraction = 1.0
  feature.presence.min_count = 1
  feature.shape.dim.add().size = 1
  return feature


def dataset_schema(class_names: List[str]) -> schema_pb2.Schema:
  """The schema of labeled image examples of these classes (id order):
  one encoded image each, a label in [0, K-1] and its class name, both
  absent at serving, the image's file where it came from one (an image
  folder's; TFRecords have none) and its statistics. The file is read by
  search only, never parsed for training: it has no shape. The class
  shares and the image statistics are compared with the previous span's."""
  if not class_names:
    raise ValueError("a dataset schema needs at least one class")
  if len(set(class_names)) != len(class_names):
    raise ValueError(f"class names repeat: {class_names}")
  schema = schema_pb2.Schema(default_environment=[TRAINING, SERVING])
  _required(schema.feature.add(name=IMAGE_KEY, type=schema_pb2.BYTES))
  label = _required(schema.feature.add(name=LABEL_KEY, type=schema_pb2.INT))
  label.int_domain.name = LABEL_KEY
  label.int_domain.min = 0
  label.int_domain.max = len(class_names) - 1
  label.int_domain.is_categorical = True
  label.not_in_environment.append(SERVING)
  name = _required(schema.feature.add(name=CLASS_NAME_KEY, type=schema_pb2.BYTES))
  name.string_domain.name = CLASS_NAME_KEY
  name.string_domain.value.extend(class_names)
  name.not_in_environment.append(SERVING)
  name.drift_comparator.infinity_norm.threshold = CLASS_DRIFT_LINF
  path = schema.feature.add(name=IMAGE_PATH_KEY, type=schema_pb2.BYTES)
  path.value_count.min = path.value_count.max = 1
  path.not_in_environment.append(SERVING)
  add_image_statistics(schema)
  return schema


def add_image_statistics(schema: schema_pb2.Schema) -> schema_pb2.Schema:
  """The features ExampleGen adds of each image's pixels (`ImageStatistics`),
  one value each, absent at serving, compared with the previous span's by
  Jensen-Shannon divergence; never parsed for training (no shape)."""
  for key, kind in (
      (IMAGE_HEIGHT_KEY, schema_pb2.INT),
      (IMAGE_WIDTH_KEY, schema_pb2.INT),
      *((k, schema_pb2.FLOAT) for k in CHANNEL_MEAN_KEYS),
  ):
    feature = schema.feature.add(name=key, type=kind)
    feature.value_count.min = feature.value_count.max = 1
    feature.not_in_environment.append(SERVING)
    feature.drift_comparator.jensen_shannon_divergence.threshold = IMAGE_STATISTICS_DRIFT_JS
  return schema


def read_schema(path: str) -> schema_pb2.Schema:
  """The Schema in the text-format file at `path` (local or GCS)."""
  from google.protobuf import text_format
  import tensorflow as tf

  with tf.io.gfile.GFile(path) as f:
    return text_format.Parse(f.read(), schema_pb2.Schema())


def write_schema(schema: schema_pb2.Schema, path: str, header: str = "") -> None:
  """Writes `schema` to `path` in text format, `header`'s lines as comments above it."""
  from google.protobuf import text_format
  import tensorflow as tf

  comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(comment + text_format.MessageToString(schema))


def class_names(schema: schema_pb2.Schema) -> List[str]:
  """The class names in id order: the `class_name` feature's string domain."""
  for feature in schema.feature:
    if feature.name == CLASS_NAME_KEY:
      domain = feature.string_domain
      if not domain.value:  # a named domain defined at the schema's top level
        domain = next((d for d in schema.string_domain if d.name == domain.name), domain)
      if domain.value:
        return list(domain.value)
  raise ValueError(
      f"the schema has no '{CLASS_NAME_KEY}' feature with a string "
      "domain of class names (id order)"
  )
