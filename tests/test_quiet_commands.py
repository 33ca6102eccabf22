"""Every command a person runs is as quiet as the pipeline: the command-line
tools, on tiny real input, write none of `models.run_log.HARMLESS`'s lines
to stderr (TensorFlow's CUDA factory errors, TF-TRT, google.api_core's
Python-version warning, rendezvous OUT_OF_RANGE...), and `-v` still shows
them."""

import os
import re
import subprocess
import sys

import pytest

from models import names, run_log
from tests.conftest import cifar10_class_names, save_image


def _run(*argv, verbose=False, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != run_log.VERBOSE_ENV}
  if verbose:
    env[run_log.VERBOSE_ENV] = "1"
  done = subprocess.run(
      [sys.executable, "-m", *argv],
      cwd=names.PROJECT_DIR,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
  assert done.returncode == 0, (argv, done.stderr[-3000:])
  return done


def _harmless_lines(stderr):
  return [
      line
      for line in stderr.splitlines()
      if any(re.search(rule.pattern, line) for rule in run_log.HARMLESS)
  ]


@pytest.fixture(scope="module")
def tiny(smoke_run, cifar10_sample, tmp_path_factory):
  """A folder of 12 real images, their embeddings by the smoke run's pushed
  model (made by `serving.embed`, itself checked), and the model folder."""
  (images, labels), _ = cifar10_sample
  folder = tmp_path_factory.mktemp("tiny")
  class_names = cifar10_class_names()
  for i in range(12):
    save_image(images[i], str(folder / "images" / class_names[labels[i]] / f"{i:02d}.png"))
  embeddings = str(folder / "tiny.npz")
  done = _run(
      "serving.embed",
      "--model-dir",
      smoke_run.serving_model_dir,
      "--images",
      str(folder / "images"),
      "--out",
      embeddings,
  )
  return folder, embeddings, smoke_run, done.stderr


def test_serving_embed_is_quiet(tiny):
  stderr = tiny[3]
  assert not _harmless_lines(stderr), stderr


def _search(tiny, k):
  """`serving.search`'s command line: the first airplane's k nearest."""
  folder, embeddings, smoke_run, _ = tiny
  query = sorted((folder / "images" / "airplane").iterdir())[0]
  return (
      "serving.search",
      "--embeddings",
      embeddings,
      "--model-dir",
      smoke_run.serving_model_dir,
      "-k",
      str(k),
      str(query),
  )


def test_each_command_line_tool_is_quiet(tiny, tmp_path):
  _, embeddings, smoke_run, _ = tiny
  commands = [
      _search(tiny, 2),
      ("serving.duplicates", "--embeddings", embeddings, "--out", str(tmp_path / "pairs.tsv")),
      ("pipeline.runs", "--output-dir", smoke_run.output_dir),
      (
          "pipeline.vertex_runner",
          "compile",
          "--project",
          "test-project",
          "--bucket",
          "gs://test-bucket",
          "--image",
          "europe-docker.pkg.dev/test-project/mae-tfx/mae-tfx:test",
          "--profile",
          "smoke",
          "--output",
          str(tmp_path / "spec.json"),
      ),
      ("benchmarks.roofline", "--profile", "smoke", "--matmul-size", "256", "--repeats", "2"),
  ]
  for argv in commands:
    stderr = _run(*argv).stderr
    assert not _harmless_lines(stderr), (argv, _harmless_lines(stderr))


def test_verbose_still_shows_everything(tiny):
  """-v / MAE_TFX_VERBOSE=1: the filter is off, TensorFlow's start-up lines
  come through (what a bug report needs)."""
  stderr = _run(*_search(tiny, 1), verbose=True).stderr
  assert _harmless_lines(stderr), stderr[-2000:]
