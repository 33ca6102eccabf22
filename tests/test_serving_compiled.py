"""The server's compiled path (serving.compiled) against the signatures it
stands in for, on an exported model with the real signatures."""

import time

import numpy as np
import pytest
import tensorflow as tf

from models.names import SERVING_BFLOAT16, SERVING_DEFAULT
from serving.compiled import bucket_sizes
from serving.model_store import LoadedModel
from tests.conftest import export_random_classifier, png_bytes
from tests.test_signatures import BFLOAT16_COSINE_FLOOR, cosines


@pytest.fixture(scope="module")
def version_dir(transform_output, tmp_path_factory):
  path = tmp_path_factory.mktemp("compiled") / "1"
  export_random_classifier(transform_output, str(path), feature_blocks=2)
  return str(path)


@pytest.fixture(scope="module")
def pngs(cifar10_sample):
  _, (images, _) = cifar10_sample
  return [png_bytes(image) for image in images[:16]]


def _signature(model, name, values):
  function = model.signatures[name].function
  return function(image_bytes=tf.constant(values))["embedding"].numpy()


def _wait_for_bucket(compiled, bucket, seconds=120):
  deadline = time.monotonic() + seconds
  while bucket not in compiled.ready_buckets and time.monotonic() < deadline:
    time.sleep(0.05)
  assert bucket in compiled.ready_buckets, f"bucket {bucket} never compiled"


def test_bucket_sizes_are_powers_of_two_up_to_the_largest_batch():
  assert bucket_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
  assert bucket_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
  assert bucket_sizes(1) == [1]


def test_a_batch_runs_the_signature_until_its_bucket_compiles_then_the_same_compiled(
    version_dir, pngs
):
  model = LoadedModel(1, version_dir, max_batch=8, compile_in_background=True)
  compiled = model.compiled(SERVING_DEFAULT)
  assert compiled is not None and compiled.ready_buckets == []
  expected = _signature(model, SERVING_DEFAULT, pngs[:3])
  first = model.run(SERVING_DEFAULT, pngs[:3])["embedding"]  # bucket 4: not compiled
  np.testing.assert_array_equal(first, expected)  # ... so the signature ran
  _wait_for_bucket(compiled, 4)  # compiled in the background
  padded = compiled.run(pngs[:3])  # 3 images padded to 4
  assert padded["embedding"].shape == expected.shape
  np.testing.assert_allclose(padded["embedding"], expected, atol=1e-5)
  assert compiled.run(pngs[:9]) is None  # more than max_batch
  model.close()


def test_a_batch_job_compiles_a_bucket_when_first_needed(version_dir, pngs):
  model = LoadedModel(1, version_dir, max_batch=8)  # compile_in_background off
  compiled = model.compiled(SERVING_DEFAULT)
  outputs = model.run(SERVING_DEFAULT, pngs[:5])["embedding"]  # bucket 8, compiled now
  assert compiled.ready_buckets == [8]
  np.testing.assert_allclose(outputs, _signature(model, SERVING_DEFAULT, pngs[:5]), atol=1e-5)


def test_a_batch_bigger_than_max_batch_runs_compiled_in_parts(version_dir, pngs):
  model = LoadedModel(1, version_dir, max_batch=4)
  outputs = model.run(SERVING_DEFAULT, pngs[:9])["embedding"]  # 4 + 4 + 1
  assert model.compiled(SERVING_DEFAULT).ready_buckets == [1, 4]
  np.testing.assert_allclose(outputs, _signature(model, SERVING_DEFAULT, pngs[:9]), atol=1e-5)


def test_warm_up_compiles_the_one_image_bucket_of_what_answers_serving_default(version_dir, pngs):
  for precision, answering in (("float32", SERVING_DEFAULT), ("bfloat16", SERVING_BFLOAT16)):
    model = LoadedModel(1, version_dir, precision=precision)
    model.warm_up()
    assert model.compiled(SERVING_DEFAULT) is model.compiled(answering)
    assert model.compiled(SERVING_DEFAULT).ready_buckets == [1]
    served = model.run(SERVING_DEFAULT, pngs[:4])["embedding"]
    expected = _signature(model, answering, pngs[:4])
    if precision == "float32":
      np.testing.assert_allclose(served, expected, atol=1e-5)
    else:  # XLA and TensorFlow's kernels round bfloat16 sums differently
      assert cosines(served, expected).min() > BFLOAT16_COSINE_FLOOR
  # A server's version: warmed up without waiting for XLA, bucket 1 compiled next.
  model = LoadedModel(1, version_dir, compile_in_background=True)
  model.warm_up()
  _wait_for_bucket(model.compiled(SERVING_DEFAULT), 1)
  model.close()


def test_a_bad_image_fails_in_the_compiled_path_as_in_the_signature(version_dir, pngs):
  model = LoadedModel(1, version_dir, max_batch=4)
  model.compiled(SERVING_DEFAULT).compile(4)
  with pytest.raises(tf.errors.InvalidArgumentError):
    model.run(SERVING_DEFAULT, [pngs[0], b"not an image", pngs[1]])
  outputs, kept, errors = model.run_isolating_errors(
      SERVING_DEFAULT, [pngs[0], b"not an image", pngs[1]]
  )
  assert kept == [0, 2] and list(errors) == [1] and outputs["embedding"].shape[0] == 2


def test_no_compile_runs_the_signatures_as_saved(version_dir, pngs):
  model = LoadedModel(1, version_dir, compiled=False)
  assert model.compiled(SERVING_DEFAULT) is None
  np.testing.assert_array_equal(
      model.run(SERVING_DEFAULT, pngs[:2])["embedding"],
      _signature(model, SERVING_DEFAULT, pngs[:2]),
  )


def test_a_bfloat16_model_answers_classify_examples_with_its_bfloat16_twin(
    version_dir, cifar10_sample
):
  """--precision bfloat16 answers classify_examples with
  classify_examples_bfloat16 (the probe reads no near-empty direction, so
  its answers hold); float32 with the signature itself."""
  from models.examples import image_example
  from models.names import CLASSIFY_EXAMPLES, CLASSIFY_EXAMPLES_BFLOAT16

  _, (images, labels) = cifar10_sample
  examples = [
      image_example(png_bytes(i), int(y), "x").SerializeToString()
      for i, y in zip(images[:6], labels)
  ]
  answers = {}
  for precision in ("float32", "bfloat16"):
    model = LoadedModel(1, version_dir, precision=precision, compiled=False)
    answers[precision] = model.run(CLASSIFY_EXAMPLES, examples)["probabilities"]
  saved = tf.saved_model.load(version_dir).signatures
  for precision, name in (("float32", CLASSIFY_EXAMPLES), ("bfloat16", CLASSIFY_EXAMPLES_BFLOAT16)):
    expected = saved[name](examples=tf.constant(examples))["probabilities"].numpy()
    np.testing.assert_allclose(answers[precision], expected, atol=1e-6)
