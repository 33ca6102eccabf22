"""The run log: a smoke run's stderr shows progress and none of the
known-harmless third-party lines; the filter loses nothing else, not even
what a process writes just before it dies."""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from models import names, run_log

# One line as each harmless message really appears (copied from runs), with
# the continuation lines its rule drops along with it.
EXAMPLES = {
    0: "2026-12-01 15:24:16.497224: E external/local_xla/xla/stream_executor/cuda/"
    "cuda_fft.cc:479] Unable to register cuFFT factory: Attempting to register "
    "factory for plugin cuFFT when one has already been registered",
    1: "2026-12-01 15:24:17.153878: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38]"
    " TF-TRT Warning: Could not find TensorRT",
    2: "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    3: "I0000 00:00:1796139551.267089   17293 device_compiler.h:188] Compiled cluster "
    "using XLA!  This line is logged at most once for the lifetime of the process.",
    4: "W0000 00:00:1796138678.228459    2029 op_level_cost_estimator.cc:699] Error in "
    'PredictCost() for the op: op: "CropAndResize" attr { key: "T" }',
    5: "2026-12-01 15:37:28.989210: E tensorflow/core/util/util.cc:131] oneDNN supports "
    "DT_HALF only on platforms with AVX-512. Falling back to the default Eigen-based "
    "implementation if present.",
    6: "2026-12-01 15:24:37.309720: W tensorflow/core/framework/local_rendezvous.cc:404] "
    "Local rendezvous is aborting with status: OUT_OF_RANGE: End of sequence",
    7: "WARNING:absl:ArtifactQuery.property_predicate is not supported.",
    8: "WARNING:tensorflow:AutoGraph could not transform <function create_autocast_variable "
    "at 0x7fdebbee2710> and will run it as-is.\nPlease report this to the TensorFlow "
    "team. When filing the bug, set the verbosity to 10\nCause: <gast.gast.Expr object "
    "at 0x7fde953a68f0>\nTo silence this warning, decorate the function with "
    "@tf.autograph.experimental.do_not_convert",
    9: "WARNING:absl:Analyzer (mean/mean_and_var/temporary_analyzer_output/"
    "PlaceholderWithDefault:0) node's cache key varies on repeated tracing. This "
    "warning is safe to ignore if you either specify `name` for all analyzers",
    10: "WARNING:absl:Not using the in-place Transform because the following features "
    "require analyzing: ('image',)",
    11: "WARNING:absl:`custom_executor_spec` is deprecated. Please customize component "
    "directly.",
    12: "WARNING:tensorflow:SavedModel saved prior to TF 2.5 detected when loading Keras "
    "model. Please ensure that you are saving the model with model.save()",
    13: "WARNING:tensorflow:From /x/tensorflow_model_analysis/writers/"
    "metrics_plots_and_validations_writer.py:112: tf_record_iterator (from "
    "tensorflow.python.lib.io.tf_record) is deprecated and will be removed in a "
    "future version.\nInstructions for updating:\nUse eager execution and: \n"
    "`tf.data.TFRecordDataset(path)`",
    14: "WARNING:root:Resource module is not available for current platform, memory usage "
    "cannot be fetched.",
    15: "WARNING:tensorflow:From /x/tfx_bsl/beam/run_inference.py:626: load (from "
    "tensorflow.python.saved_model.loader_impl) is deprecated and will be removed in a "
    "future version.\nInstructions for updating:\nUse `tf.saved_model.load` instead.",
    16: "/x/google/api_core/_python_version_support.py:246: FutureWarning: You are using "
    "a non-supported Python version (3.10.13). Google will not post any further "
    "updates\n  warnings.warn(message, FutureWarning)",
    17: "NOTE: Using experimental fast data loading logic. To disable, pass\n"
    '    "--load_fast=false" and report issues on GitHub. More details:\n'
    "    https://github.com/tensorflow/tensorboard/issues/4784\n",
}
KEPT = [
    "2026-12-01 15:24:37.309720: W tensorflow/core/framework/local_rendezvous.cc:404] "
    "Local rendezvous is aborting with status: INVALID_ARGUMENT: bad image",
    "W0000 00:00:1796139551.267089   17293 device_compiler.h:188] a real warning",
    "WARNING:absl:ArtifactQuery.type.name should be set.",
    "Traceback (most recent call last):",
    "15:31:40 Cifar10ExampleGen: done in 4.2 s",
]


def test_every_rule_has_a_reason_and_an_example():
  assert sorted(EXAMPLES) == list(range(len(run_log.HARMLESS)))
  for rule in run_log.HARMLESS:
    assert len(rule.why) > 30, rule.pattern


def test_the_filter_drops_each_harmless_message_whole_and_keeps_the_rest():
  line_filter = run_log.LineFilter()
  for i, example in EXAMPLES.items():
    lines = example.split("\n")
    assert [line_filter.keep(line) for line in lines] == [False] * len(lines), i
    assert line_filter.keep(KEPT[i % len(KEPT)])  # continuation ends with the message
  assert line_filter.hidden == sum(len(e.split("\n")) for e in EXAMPLES.values())


def _run_filtered(code: str, verbose: bool = False) -> subprocess.CompletedProcess:
  env = {
      k: v for k, v in os.environ.items() if k not in (run_log.VERBOSE_ENV, "MAE_TFX_LOG_FILTERED")
  }
  if verbose:
    env[run_log.VERBOSE_ENV] = "1"
  return subprocess.run(
      [sys.executable, "-c", "from models import run_log\nrun_log.install()\n" + code],
      cwd=names.PROJECT_DIR,
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
  )


_CHILD = f"import sys; sys.stderr.write({EXAMPLES[7] + chr(10) + 'from a child' + chr(10)!r})"
HARMLESS_AND_REAL = (
    "import os, subprocess, sys\n"
    f"sys.stderr.write({EXAMPLES[6] + chr(10) + KEPT[0] + chr(10)!r})\n"
    "sys.stderr.flush()\n"
    f"subprocess.run([sys.executable, '-c', {_CHILD!r}])\n"
)  # the child: the same filter


def test_a_process_that_is_killed_loses_no_kept_line():
  """A filter thread would die with the process; the filter process drains
  the pipe after a SIGKILL (or a C++ abort) and passes on its last words."""
  run = _run_filtered(HARMLESS_AND_REAL + "os.kill(os.getpid(), 9)\n")
  assert run.returncode == -9
  lines = run.stderr.splitlines()
  assert lines[:2] == [KEPT[0], "from a child"]
  assert re.fullmatch(
      r"\d\d:\d\d:\d\d \(2 known-harmless third-party log lines hidden; "
      r"-v or MAE_TFX_VERBOSE=1 shows them\)",
      lines[2],
  )
  assert len(lines) == 3


def test_a_traceback_comes_through_and_verbose_shows_everything():
  run = _run_filtered(HARMLESS_AND_REAL + "raise ValueError('the real error')\n")
  assert run.returncode == 1
  assert "Traceback (most recent call last)" in run.stderr
  assert "ValueError: the real error" in run.stderr
  assert EXAMPLES[6] not in run.stderr
  verbose = _run_filtered(HARMLESS_AND_REAL, verbose=True)
  assert EXAMPLES[6] in verbose.stderr and EXAMPLES[7] in verbose.stderr
  assert "hidden" not in verbose.stderr


def test_a_progress_bar_and_an_unfinished_line_pass_at_once(tmp_path):
  """Carriage-return updates and a prompt without a newline are not held back
  waiting for an end of line."""
  read_end, write_end = os.pipe()
  out = tmp_path / "out"
  expected = b"\r 10%|#  |\r 20%|## |Continue? "
  with open(out, "wb") as sink:
    pump = threading.Thread(
        target=run_log.pump, args=(read_end, sink.fileno(), run_log.LineFilter(), 0.1)
    )
    pump.start()
    os.write(write_end, b"\r 10%|#  |\r 20%|## |")
    os.write(write_end, b"Continue? ")
    deadline = time.monotonic() + 5
    while out.read_bytes() != expected and time.monotonic() < deadline:
      time.sleep(0.05)
    assert out.read_bytes() == expected
    os.close(write_end)
    pump.join(timeout=5)
  os.close(read_end)
  assert not pump.is_alive()


def test_pytest_report_sections_are_filtered_alike():
  sections = [
      ("Captured stderr call", f"{EXAMPLES[7]}\n{KEPT[2]}\n"),
      ("Captured stdout call", "x\n"),
  ]
  assert run_log.filter_report_sections(sections) == [
      ("Captured stderr call", f"{KEPT[2]}\n"),
      ("Captured stdout call", "x\n"),
  ]


def test_the_smoke_run_log_shows_progress_and_no_harmless_line(smoke_run_log):
  """`make pipeline PROFILE=smoke`'s stderr: each component's start and end
  with its time, the epochs with img/s and the time left, the gate's verdict
  and the push; none of HARMLESS; the report on stdout."""
  stderr, stdout = smoke_run_log
  lines = stderr.splitlines()
  for rule in run_log.HARMLESS:
    assert not [line for line in lines if re.search(rule.pattern, line)], rule.pattern
  for node in (
      "Cifar10ExampleGen",
      "StatisticsGen",
      "Transform",
      names.MAE_TRAINER,
      names.PROBE_TRAINER,
      "Evaluator",
      "CorpusEmbedder",
      "SearchIndexer",
      "Pusher",
  ):
    assert f"{node}: started" in stderr
    # (a loaded machine can take a minute: run_log.duration's "1 min 02 s")
    assert re.search(
        rf"^\d\d:\d\d:\d\d {node}: done in (\d+\.\d s|\d+ min \d\d s)$", stderr, re.M
    ), node
  assert re.search(
      r"\[mae_pretrain\] epoch 1/2 loss \d\.\d{4} lr \S+ \d+ img/s \d+\.\d s, ETA \d", stderr
  )
  assert re.search(r"\[mae_pretrain\] epoch 2/2 loss \d\.\d{4} lr \S+ \d+ img/s", stderr)
  assert re.search(r"\[linear_probe\] epoch 5/5 accuracy \S+ loss \S+ val_accuracy", stderr)
  assert re.search(
      r"Evaluator: (blessed|NOT blessed: .+) \(test accuracy: linear probe "
      r"0\.\d{4}, 20-NN 0\.\d{4}\)",
      stderr,
  )
  assert (
      "CorpusEmbedder: the new model, blessed: the whole corpus embedded by it; "
      "320 vectors added, 0 reused, 0 removed" in stderr
  )
  assert re.search(
      r"SearchIndexer: blessed: exact index of 320 x 64 \(320 vectors < "
      r"search.exact_below 20000: .*\): recall@10 1\.0000 on 50 held-out queries "
      r"\(min 0\.95; tuned on 50 others: recall 1\.0000\)",
      stderr,
  )
  assert re.search(r"Pusher: pushed version \d+ to \S+serving_model/mae-tfx/\d+", stderr)
  assert re.search(r"\(\d+ known-harmless third-party log lines hidden", stderr)
  # Cached and failed runs say so in the same place; the report is on stdout.
  assert "=== mae-tfx run report ===" in stdout and "Pusher: pushed version" in stdout
  assert "run report" not in stderr


@pytest.mark.parametrize("argv", [["-v"], ["--verbose"]])
def test_verbose_is_asked_for_by_flag_or_environment(argv, monkeypatch):
  monkeypatch.delenv(run_log.VERBOSE_ENV, raising=False)
  assert run_log.verbose_requested(argv) and not run_log.verbose_requested(["--data", "x"])
  monkeypatch.setenv(run_log.VERBOSE_ENV, "1")
  assert run_log.verbose_requested([])
  monkeypatch.setenv(run_log.VERBOSE_ENV, "0")
  assert not run_log.verbose_requested([])


def test_the_gate_verdict_names_each_failed_threshold(tmp_path):
  """A floor missed and a drop against the model blessed before, as TFMA
  records them (the drop as a diff key), read back as the log says them."""
  import tensorflow as tf
  from tensorflow_model_analysis.proto import config_pb2, validation_result_pb2
  from pipeline.run_outputs import gate_failures

  threshold = config_pb2.MetricThreshold()
  threshold.value_threshold.lower_bound.value = 0.45
  threshold.change_threshold.absolute.value = -0.01
  result = validation_result_pb2.ValidationResult(validation_ok=False)
  per_slice = result.metric_validations_per_slice.add()
  for is_diff, value in ((False, 0.4123), (True, -0.0321)):
    failure = per_slice.failures.add()
    failure.metric_key.name = "sparse_categorical_accuracy"
    failure.metric_key.output_name = names.PROBABILITIES_KEY
    failure.metric_key.is_diff = is_diff
    failure.metric_threshold.CopyFrom(threshold)
    failure.metric_value.double_value.value = value
  with tf.io.TFRecordWriter(str(tmp_path / "validations.tfrecord")) as writer:
    writer.write(result.SerializeToString())
  assert gate_failures(str(tmp_path)) == [
      "linear probe accuracy 0.4123 is below the floor 0.45",
      "linear probe accuracy -0.0321 against the model blessed before it, where at most 0.01 "
      "lower is allowed",
  ]
