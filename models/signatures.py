"""Serving signatures of the exported encoder (TF Serving / Vertex compatible).

Every signature prepares pixels with the Transform graph:

  serving_default    image_bytes: string [B] (PNG/JPEG/...) -> embedding [B, D]
  serving_bfloat16   the same, the encoder computing in bfloat16 (about twice
                     the throughput on a CPU with native bfloat16)
  embed_examples     examples: serialized tf.Example [B]    -> embedding [B, D]
  classify_examples  examples: serialized tf.Example [B]    -> probabilities [B, K],
                                                              class_name [B],
                                                              knn_probabilities [B, K]
  classify_examples_bfloat16  the same, the encoder computing in bfloat16

`probabilities` and `class_name` are the linear probe's; `knn_probabilities`
the weighted votes of the k nearest training embeddings (cosine; the bank is
saved in the model; the probe Trainer always sets one), what the k-NN
accuracy measures.

The class names (id order) are an asset of the SavedModel,
`assets/class_names.txt`, read by classify_examples's lookup table.

`image_bytes` ends in `_bytes`, so TF Serving's REST API accepts
`{"instances": [{"b64": "<base64>"}]}` for it.

Beside the signatures, two plain functions hold the image-bytes signatures'
halves (names.PREPARE_IMAGE_BYTES, names.EMBED_IMAGES): decoding + the
Transform graph, and the encoder + whitening. TF Serving ignores them; this
project's server compiles the second half with XLA, which cannot compile
image decoding (serving.model_store).
"""

import os
import tempfile
from typing import Dict, List

import tensorflow as tf
import tensorflow_transform as tft

from models.linear_probe import ProbeClassifier
from models.names import (
    CLASS_NAME_OUTPUT,
    CLASS_NAMES_FILE,
    CLASSIFY_EXAMPLES,
    CLASSIFY_EXAMPLES_BFLOAT16,
    EMBED_EXAMPLES,
    EMBEDDING_KEY,
    EXAMPLES_INPUT,
    EMBED_IMAGES,
    IMAGE_BYTES_INPUT,
    IMAGE_KEY,
    KNN_PROBABILITIES_KEY,
    PREPARE_IMAGE_BYTES,
    PROBABILITIES_KEY,
    SERVING_BFLOAT16,
    SERVING_DEFAULT,
)


def serving_feature_spec(
    tf_transform_output: tft.TFTransformOutput,
) -> Dict[str, tf.io.FixedLenFeature]:
  """The raw feature spec of the image alone: what a serving Example carries
  (no label, no class name)."""
  return {IMAGE_KEY: tf_transform_output.raw_feature_spec()[IMAGE_KEY]}


def class_names_table(class_names: List[str], directory: str) -> tf.lookup.StaticHashTable:
  """Id -> class name, from a text file (one name a line) that saving the
  SavedModel copies into its assets."""
  path = os.path.join(directory, CLASS_NAMES_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(f"{name}\n" for name in class_names))
  return tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(
          path,
          tf.int64,
          tf.lookup.TextFileIndex.LINE_NUMBER,
          tf.string,
          tf.lookup.TextFileIndex.WHOLE_LINE,
      ),
      default_value="",
  )


def build_signatures(
    classifier: ProbeClassifier, tf_transform_output: tft.TFTransformOutput, asset_dir: str
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """Returns {name: concrete function}; tracks the Transform layer and the
  class-name table (its file written to `asset_dir`) on `classifier`."""
  classifier.tft_layer = tf_transform_output.transform_features_layer()
  classifier.class_names_table = class_names_table(classifier.class_names, asset_dir)
  feature_spec = serving_feature_spec(tf_transform_output)

  def images_from_bytes(image_bytes):
    raw = {IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])}
    return classifier.tft_layer(raw)[IMAGE_KEY]

  def images_from_examples(examples):
    return classifier.tft_layer(tf.io.parse_example(examples, feature_spec))[IMAGE_KEY]

  bytes_spec = tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)
  images_spec = tf.TensorSpec(
      [None, *tf_transform_output.transformed_feature_spec()[IMAGE_KEY].shape],
      tf.float32,
      name="images",
  )

  @tf.function(input_signature=[bytes_spec])
  def prepare_image_bytes(image_bytes):
    return images_from_bytes(image_bytes)

  def embed_images(precision):
    return tf.function(
        lambda images: {EMBEDDING_KEY: classifier.embed(images, precision)},
        input_signature=[images_spec],
    )

  # The halves are saved as the classifier's functions; the signatures join them.
  setattr(classifier, PREPARE_IMAGE_BYTES, prepare_image_bytes)
  for signature, precision in ((SERVING_DEFAULT, "float32"), (SERVING_BFLOAT16, "bfloat16")):
    setattr(classifier, EMBED_IMAGES[signature], embed_images(precision))

  def serve_image_bytes(signature):
    embed = getattr(classifier, EMBED_IMAGES[signature])
    return tf.function(
        lambda image_bytes: embed(prepare_image_bytes(image_bytes)), input_signature=[bytes_spec]
    )

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
  def embed_examples(examples):
    return {EMBEDDING_KEY: classifier.embed(images_from_examples(examples))}

  def classify_examples(precision):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def classify(examples):
      images = images_from_examples(examples)
      probabilities = classifier.probabilities(images, precision)
      best = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
      outputs = {
          PROBABILITIES_KEY: probabilities,
          CLASS_NAME_OUTPUT: classifier.class_names_table.lookup(best),
      }
      if classifier.knn_bank is not None:
        outputs[KNN_PROBABILITIES_KEY] = classifier.knn_probabilities(images, precision)
      return outputs

    return classify

  return {
      SERVING_DEFAULT: serve_image_bytes(SERVING_DEFAULT).get_concrete_function(),
      SERVING_BFLOAT16: serve_image_bytes(SERVING_BFLOAT16).get_concrete_function(),
      EMBED_EXAMPLES: embed_examples.get_concrete_function(),
      CLASSIFY_EXAMPLES: classify_examples("float32").get_concrete_function(),
      CLASSIFY_EXAMPLES_BFLOAT16: classify_examples("bfloat16").get_concrete_function(),
  }


def export_saved_model(
    classifier: ProbeClassifier, tf_transform_output: tft.TFTransformOutput, export_dir: str
) -> None:
  """Writes one SavedModel with the signatures and the class names."""
  if classifier.encoder_bfloat16 is None:
    classifier.add_bfloat16_encoder()
  with tempfile.TemporaryDirectory() as asset_dir:
    signatures = build_signatures(classifier, tf_transform_output, asset_dir)
    tf.saved_model.save(classifier, export_dir, signatures=signatures)
