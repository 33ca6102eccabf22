"""Serving signatures of the exported encoder (TF Serving / Vertex compatible).

Every signature prepares pixels with the Transform graph:

  serving_default    image_bytes: string [B] (PNG/JPEG/...) -> embedding [B, D]
  embed_examples     examples: serialized tf.Example [B]    -> embedding [B, D]
  classify_examples  examples: serialized tf.Example [B]    -> probabilities [B, 10]

`image_bytes` ends in `_bytes`, so TF Serving's REST API accepts
`{"instances": [{"b64": "<base64>"}]}` for it.
"""

from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

from models.linear_probe import ProbeClassifier
from models.names import (CLASSIFY_EXAMPLES, EMBED_EXAMPLES, EMBEDDING_KEY,
                          EXAMPLES_INPUT, IMAGE_BYTES_INPUT, IMAGE_KEY, LABEL_KEY,
                          PROBABILITIES_KEY, SERVING_DEFAULT)


def serving_feature_spec(tf_transform_output: tft.TFTransformOutput
                         ) -> Dict[str, tf.io.FixedLenFeature]:
  """The raw feature spec without the label: what a serving Example carries."""
  spec = dict(tf_transform_output.raw_feature_spec())
  spec.pop(LABEL_KEY, None)
  return spec


def build_signatures(classifier: ProbeClassifier,
                     tf_transform_output: tft.TFTransformOutput
                     ) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """Returns {name: concrete function}; tracks the Transform layer on `classifier`."""
  classifier.tft_layer = tf_transform_output.transform_features_layer()
  feature_spec = serving_feature_spec(tf_transform_output)

  def images_from_bytes(image_bytes):
    raw = {IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])}
    return classifier.tft_layer(raw)[IMAGE_KEY]

  def images_from_examples(examples):
    return classifier.tft_layer(tf.io.parse_example(examples, feature_spec))[IMAGE_KEY]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
  def serve_image_bytes(image_bytes):
    return {EMBEDDING_KEY: classifier.embed(images_from_bytes(image_bytes))}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
  def embed_examples(examples):
    return {EMBEDDING_KEY: classifier.embed(images_from_examples(examples))}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
  def classify_examples(examples):
    return {PROBABILITIES_KEY: classifier.probabilities(images_from_examples(examples))}

  return {
      SERVING_DEFAULT: serve_image_bytes.get_concrete_function(),
      EMBED_EXAMPLES: embed_examples.get_concrete_function(),
      CLASSIFY_EXAMPLES: classify_examples.get_concrete_function(),
  }


def export_saved_model(classifier: ProbeClassifier,
                       tf_transform_output: tft.TFTransformOutput,
                       export_dir: str) -> None:
  """Writes one SavedModel with the three signatures."""
  signatures = build_signatures(classifier, tf_transform_output)
  tf.saved_model.save(classifier, export_dir, signatures=signatures)
