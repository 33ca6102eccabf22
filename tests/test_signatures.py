"""The exported SavedModel: one model, four TF-Serving-compatible signatures,
and the halves of the image-bytes ones that the server compiles."""

import numpy as np
import pytest
import tensorflow as tf

from models import config as config_lib
from models import names
from models.names import (
    CLASSIFY_EXAMPLES,
    CLASSIFY_EXAMPLES_BFLOAT16,
    EMBED_EXAMPLES,
    SERVING_BFLOAT16,
    SERVING_DEFAULT,
)
from tests.conftest import export_random_classifier, jpeg_bytes, png_bytes


def _example(image):
  return tf.train.Example(
      features=tf.train.Features(
          feature={
              "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(image)]))
          }
      )
  ).SerializeToString()


@pytest.fixture(scope="module")
def exported(transform_output, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("export"))
  # feature_blocks=2: the exported embedding is both blocks' pooled tokens.
  classifier = export_random_classifier(transform_output, path, feature_blocks=2)
  return classifier, tf.saved_model.load(path), 2 * config_lib.get_profile("smoke").model.embed_dim


def test_signatures_and_their_tensors(exported):
  _, loaded, dim = exported
  sigs = loaded.signatures
  assert set(sigs) == {
      SERVING_DEFAULT,
      SERVING_BFLOAT16,
      EMBED_EXAMPLES,
      CLASSIFY_EXAMPLES,
      CLASSIFY_EXAMPLES_BFLOAT16,
  }
  assert list(sigs[SERVING_DEFAULT].structured_input_signature[1]) == ["image_bytes"]
  assert list(sigs[SERVING_BFLOAT16].structured_input_signature[1]) == ["image_bytes"]
  assert list(sigs[CLASSIFY_EXAMPLES].structured_input_signature[1]) == ["examples"]
  assert sigs[SERVING_DEFAULT].structured_outputs["embedding"].shape.as_list() == [None, dim]


def test_png_and_jpeg_give_embeddings_of_the_same_shape(exported, cifar10_sample):
  _, loaded, dim = exported
  (images, _), _ = cifar10_sample
  serve = loaded.signatures[SERVING_DEFAULT]
  png = serve(image_bytes=tf.constant([png_bytes(i) for i in images[:4]]))["embedding"]
  jpg = serve(image_bytes=tf.constant([jpeg_bytes(i) for i in images[:4]]))["embedding"]
  assert png.shape == jpg.shape == (4, dim) and png.dtype == tf.float32
  # JPEG artefacts move the embedding only a little compared with other images.
  same = np.linalg.norm(png - jpg, axis=1)
  other = np.linalg.norm(png - np.roll(png, 1, axis=0), axis=1)
  assert np.all(same < other)


def test_serving_default_equals_the_transform_path(exported, transform_output, cifar10_sample):
  classifier, loaded, _ = exported
  (images, _), _ = cifar10_sample
  served = loaded.signatures[SERVING_DEFAULT](
      image_bytes=tf.constant([png_bytes(i) for i in images[:8]])
  )["embedding"]
  # Reference: parse Examples with the schema's spec, Transform layer, encoder.
  spec = {"image": tf.io.FixedLenFeature([1], tf.string)}
  parsed = tf.io.parse_example(tf.constant([_example(i) for i in images[:8]]), spec)
  reference = classifier.embed(transform_output.transform_features_layer()(parsed)["image"])
  np.testing.assert_allclose(served.numpy(), reference.numpy(), atol=1e-5)
  by_examples = loaded.signatures[EMBED_EXAMPLES](
      examples=tf.constant([_example(i) for i in images[:8]])
  )["embedding"]
  np.testing.assert_allclose(by_examples.numpy(), served.numpy(), atol=1e-5)


def test_classify_examples_gives_probabilities(exported, cifar10_sample):
  _, loaded, _ = exported
  (images, _), _ = cifar10_sample
  probs = loaded.signatures[CLASSIFY_EXAMPLES](
      examples=tf.constant([_example(i) for i in images[:5]])
  )["probabilities"].numpy()
  assert probs.shape == (5, 10)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_classify_examples_gives_the_knn_votes_of_the_saved_bank(
    exported, cifar10_sample, transform_output
):
  from models.evaluation import knn_predict

  classifier, loaded, _ = exported
  (images, _), _ = cifar10_sample
  examples = tf.constant([_example(i) for i in images[:8]])
  votes = loaded.signatures[CLASSIFY_EXAMPLES](examples=examples)["knn_probabilities"].numpy()
  assert votes.shape == (8, 10)
  np.testing.assert_allclose(votes.sum(1), 1.0, rtol=1e-5)
  assert ((votes > 0).sum(1) <= 20).all()  # only k = 20 neighbours vote
  spec = {"image": tf.io.FixedLenFeature([1], tf.string)}
  embedded = classifier.embed(
      transform_output.transform_features_layer()(tf.io.parse_example(examples, spec))["image"]
  ).numpy()
  expected = knn_predict(
      classifier.knn_bank.numpy(), classifier.knn_labels.numpy(), embedded, k=20, num_classes=10
  )
  np.testing.assert_array_equal(votes.argmax(1), expected)


def test_bytes_that_are_not_an_image_fail_loudly(exported):
  _, loaded, _ = exported
  with pytest.raises(tf.errors.InvalidArgumentError):
    loaded.signatures[SERVING_DEFAULT](image_bytes=tf.constant([b"not an image"]))


# The floor the bfloat16 embedding keeps to the float32 one (8 bits of
# mantissa in each matmul; whitening and pooling stay float32): the
# default pipeline's model kept a cosine of 0.996 or more on all 10,000
# test images (benchmarks/RESULTS.md, issue 28).
BFLOAT16_COSINE_FLOOR = 0.99


def cosines(a, b):
  return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_serving_bfloat16_is_the_same_embedding_at_lower_precision(exported, cifar10_sample):
  _, loaded, dim = exported
  (images, _), _ = cifar10_sample
  values = tf.constant([png_bytes(i) for i in images[:32]])
  full = loaded.signatures[SERVING_DEFAULT](image_bytes=values)["embedding"].numpy()
  half = loaded.signatures[SERVING_BFLOAT16](image_bytes=values)["embedding"].numpy()
  assert half.shape == full.shape == (32, dim) and half.dtype == np.float32
  assert cosines(full, half).min() > BFLOAT16_COSINE_FLOOR
  assert not np.array_equal(full, half)  # it did compute in bfloat16


def test_the_saved_halves_join_into_the_signatures(exported, cifar10_sample):
  _, loaded, _ = exported
  (images, _), _ = cifar10_sample
  values = tf.constant([png_bytes(i) for i in images[:4]])
  prepared = getattr(loaded, names.PREPARE_IMAGE_BYTES)(values)
  for signature, function in names.EMBED_IMAGES.items():
    joined = getattr(loaded, function)(prepared)["embedding"].numpy()
    whole = loaded.signatures[signature](image_bytes=values)["embedding"].numpy()
    np.testing.assert_allclose(joined, whole, atol=1e-6)
