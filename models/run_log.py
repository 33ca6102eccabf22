"""The run log a person reads: progress lines, and third-party noise kept out.

Progress (each component's start and end, epochs with img/s, loss and the
time left, the gate's verdict, what was pushed where) goes to standard
error through `log`, one timestamped line each. Lines that TensorFlow, TFX,
tf.Transform and TFMA print on every healthy run and that say nothing about
this run are listed in `HARMLESS`, each with why it is harmless, and
filtered here, the one place: `install()` passes the process's standard
error (Python's and the C++ libraries' alike, and its child processes') through
a filter process, and `filter_report_sections` does the same for pytest's
captured output. Everything else is kept. `-v` on the commands that call
`install` or MAE_TFX_VERBOSE=1 shows everything, INFO logs included.

Standard library only: it runs before TensorFlow is imported, and as the
filter process itself (`python models/run_log.py`).
"""

import atexit
import dataclasses
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import List, Optional, Sequence

VERBOSE_ENV = "MAE_TFX_VERBOSE"  # 1: show every line, INFO logs included
_FILTERED_ENV = "MAE_TFX_LOG_FILTERED"  # the filtered pipe (`_stderr_identity`)


# ---- the progress log ----------------------------------------------------------
class _CurrentStderr(logging.StreamHandler):
  """Writes to whatever sys.stderr is when a line is logged (pytest and
  Jupyter replace it), not to the one there was at import."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, _):
    pass


log = logging.getLogger("mae_tfx")
if not log.handlers:
  _handler = _CurrentStderr()
  _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log.addHandler(_handler)
  log.setLevel(logging.INFO)
  log.propagate = False


def duration(seconds: float) -> str:
  """12.3 s, 4 min 05 s, 1 h 02 min."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes} min {secs:02d} s"
  return f"{minutes // 60} h {minutes % 60:02d} min"


# ---- what is filtered, and why ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Harmless:
  """A kind of line the filter drops, and why it may."""

  pattern: str  # a regular expression searched for in the line
  why: str  # why the line says nothing about the run
  follow: int = 0  # lines after it that belong to the same message


HARMLESS: Sequence[Harmless] = (
    Harmless(
        r"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register "
        r"factory for plugin cu\w+ when one has already been registered",
        "TensorFlow 2.16's wheel registers its CUDA plugins from two of its own "
        "libraries and refuses the second registration; nothing uses CUDA here",
    ),
    Harmless(
        r"TF-TRT Warning: Could not find TensorRT",
        "TensorRT is an optional NVIDIA inference library TensorFlow looks for at "
        "import; the project never uses TF-TRT",
    ),
    Harmless(
        r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
        "absl's C++ logging announcing where it writes, before the lines below",
    ),
    Harmless(
        r"^I\d{4} [\d:.]+ +\d+ \S+:\d+\] ",
        "INFO lines of XLA's C++ runtime (service started, cluster compiled): they "
        "log through absl, which TF_CPP_MIN_LOG_LEVEL does not reach, so the level "
        "is applied here",
    ),
    Harmless(
        r"op_level_cost_estimator\.cc:\d+\] Error in PredictCost\(\) for the op: "
        r"op: \"CropAndResize\"",
        "Grappler's cost model has no estimate for CropAndResize (the random "
        "resized crop of the augmentation); it only orders the graph's ops",
    ),
    Harmless(
        r"oneDNN supports DT_\w+ only on platforms with AVX-512\. Falling back to "
        r"the default Eigen-based implementation",
        "an int32 or float16 op (the k-NN bank is float16) runs in Eigen instead of "
        "oneDNN: the same result, whatever the CPU",
    ),
    Harmless(
        r"Local rendezvous is aborting with status: OUT_OF_RANGE: End of sequence",
        "tf.data's end of a finite dataset (every epoch and evaluation pass ends "
        "so); TensorFlow 2.16 logs it as a warning",
    ),
    Harmless(
        r"ArtifactQuery\.property_predicate is not supported\.|"
        r"ContextQuery\.property_predicate is not supported\.",
        "TFX 1.16's input resolver tests the predicate field's truth rather than "
        "its presence, so it warns for every input channel; no channel of this "
        "pipeline sets a predicate (its compiled IR has none)",
    ),
    Harmless(
        r"AutoGraph could not transform <function create_autocast_variable at ",
        "Keras 2's mixed-precision variable factory runs as plain Python, as it "
        "should: it wraps variables when the model is built, no tensor op to convert",
        follow=3,
    ),
    Harmless(
        r"Analyzer \(.+\) node's cache key varies on repeated tracing",
        "tf.Transform's analyzer cache: safe, as its own message says, when "
        "analyzers run in a fixed order, as preprocessing_fn's mean then var do",
    ),
    Harmless(
        r"Not using the in-place Transform because the following features require analyzing",
        "Transform analyses the image's channel mean and std on purpose, so it "
        "makes a full pass rather than transforming in place",
    ),
    Harmless(
        r"`custom_executor_spec` is deprecated\. Please customize component directly\.",
        "VersionedPusher replaces only the executor of TFX's Pusher, keeping its "
        "spec and driver, which is what custom_executor_spec is for",
    ),
    Harmless(
        r"SavedModel saved prior to TF 2\.5 detected when loading Keras model",
        "TFMA first tries to load the model as Keras; it is saved with "
        "tf.saved_model.save on purpose and TFMA then uses its signatures",
    ),
    Harmless(
        r"tf_record_iterator \(from tensorflow\.python\.lib\.io\.tf_record\) is "
        r"deprecated and will be removed",
        "TFMA's own use of a deprecated TensorFlow reader for its results",
        follow=3,
    ),
    Harmless(
        r"Resource module is not available for current platform, memory usage cannot "
        r"be fetched",
        "Beam 2.74's RunInference imports its optional model manager beside the "
        "`resource` module and blames `resource` when the manager is missing; only "
        "its memory metric is skipped",
    ),
    Harmless(
        r"load \(from tensorflow\.python\.saved_model\.loader_impl\) is deprecated "
        r"and will be removed",
        "tfx-bsl's RunInference loads the SavedModel through TensorFlow 1's loader",
        follow=2,
    ),
    Harmless(
        r"FutureWarning: You are using a non-supported Python version \(3\.10\.",
        "google-api-core's notice about Python 3.10, which TFX 1.16 (the newest "
        "TFX that installs here) requires",
        follow=1,
    ),
    Harmless(
        r"^NOTE: Using experimental fast data loading logic\. To disable, pass",
        "TensorBoard saying it reads the logs with its data server "
        "(tensorboard-data-server, in the lock), as it has by default since 2.5; "
        "without one it falls back to its Python reader by itself",
        follow=3,
    ),
)


class LineFilter:
  """Says which lines to keep; counts the ones it drops. Stateful: a
  dropped message's continuation lines (`Harmless.follow`) go with it."""

  def __init__(self, rules: Sequence[Harmless] = HARMLESS):
    self._rules = [(re.compile(r.pattern), r.follow) for r in rules]
    self._skip = 0
    self.hidden = 0

  def keep(self, line: str) -> bool:
    """Whether `line` stays: not a `HARMLESS` one, nor a line that follows it."""
    if self._skip:
      self._skip -= 1
      self.hidden += 1
      return False
    for pattern, follow in self._rules:
      if pattern.search(line):
        self._skip = follow
        self.hidden += 1
        return False
    return True

  def filter_text(self, text: str) -> str:
    """`text` without the lines `keep` drops."""
    return "".join(line for line in text.splitlines(keepends=True) if self.keep(line))


# ---- filtering a process's standard error --------------------------------------
def verbose_requested(argv: Optional[List[str]] = None) -> bool:
  """-v / --verbose among the arguments, or MAE_TFX_VERBOSE set (not 0)."""
  argv = sys.argv[1:] if argv is None else argv
  return any(a in ("-v", "--verbose") for a in argv) or os.environ.get(VERBOSE_ENV, "0") not in (
      "",
      "0",
  )


def install(
    verbose: Optional[bool] = None, level: int = logging.WARNING, fmt: str = logging.BASIC_FORMAT
) -> bool:
  """Call first thing in a command's `__main__`, before TensorFlow is
  imported (its start-up lines come at import). Python logs at `level` and
  above, as `fmt`. Quiet (the default): stderr, of this process and of the
  processes it starts, through the `HARMLESS` filter. Verbose: everything,
  the C++ and absl INFO logs included. Returns whether it is verbose."""
  verbose = verbose_requested() if verbose is None else verbose
  logging.basicConfig(level=logging.INFO if verbose else level, format=fmt)
  if verbose:
    os.environ[VERBOSE_ENV] = "1"  # child processes too
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.getLogger("absl").setLevel(logging.INFO)
    return True
  if os.environ.get(_FILTERED_ENV) != _stderr_identity():
    _start_filter()
  return False


def _stderr_identity() -> str:
  """Which file or pipe fd 2 is: a child of a filtered process writes into
  the same filter, and must not start another."""
  st = os.fstat(2)
  return f"{st.st_dev}:{st.st_ino}"


def _start_filter() -> None:
  """Moves fd 2 onto a pipe read by a filter process that writes the kept
  lines to the real stderr. A process, not a thread, so that what a crash
  writes last (a C++ fatal error, a traceback) still comes out when this
  process dies; at exit this process waits for it to drain."""
  sys.stderr.flush()
  real_stderr = os.dup(2)
  read_end, write_end = os.pipe()
  # -I: the script's folder (models/) is not put on sys.path, so none of
  # its modules can shadow a standard one.
  filter_process = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, "-I", "-u", os.path.abspath(__file__)],
      stdin=read_end,
      stdout=real_stderr,
      stderr=real_stderr,
      close_fds=True,
  )
  os.close(read_end)
  os.dup2(write_end, 2)
  os.close(write_end)
  os.environ[_FILTERED_ENV] = _stderr_identity()

  def drain():
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(real_stderr, 2)  # this process's end of the pipe closes
    try:
      filter_process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # a child process still holds the pipe
      pass

  atexit.register(drain)


def _write_all(fd: int, data: bytes) -> None:
  while data:
    data = data[os.write(fd, data) :]


def pump(source: int, sink: int, line_filter: LineFilter, partial_after: float = 0.5) -> None:
  """Copies `source` to `sink` until end of file, line by line, leaving out
  the lines `line_filter` drops. A line still unfinished after
  `partial_after` seconds (a prompt) is passed on as it is, and so is a
  progress bar's text up to its last carriage return, at once."""
  pending = b""
  while True:
    ready, _, _ = select.select([source], [], [], partial_after if pending else None)
    if not ready:
      _write_all(sink, pending)
      pending = b""
      continue
    chunk = os.read(source, 1 << 16)
    if not chunk:
      break
    *lines, pending = (pending + chunk).split(b"\n")
    kept = b"".join(
        line + b"\n" for line in lines if line_filter.keep(line.decode("utf-8", "replace"))
    )
    if b"\r" in pending:
      cut = pending.rindex(b"\r") + 1
      kept, pending = kept + pending[:cut], pending[cut:]
    if kept:
      _write_all(sink, kept)
  if pending and line_filter.keep(pending.decode("utf-8", "replace")):
    _write_all(sink, pending)


def _filter_main() -> None:
  # Ctrl-C, or a TERM sent to the whole process group, reaches this process
  # too: keep draining until the writers are gone, so their last lines show.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  line_filter = LineFilter()
  try:
    pump(sys.stdin.fileno(), sys.stdout.fileno(), line_filter)
  except BrokenPipeError:  # the reader went away (e.g. `| head`)
    while os.read(sys.stdin.fileno(), 1 << 16):
      pass
    return
  if line_filter.hidden:
    _write_all(
        sys.stdout.fileno(),
        (
            f"{time.strftime('%H:%M:%S')} ({line_filter.hidden} known-harmless "
            f"third-party log lines hidden; -v or {VERBOSE_ENV}=1 shows them)\n"
        ).encode(),
    )


# ---- pytest ----------------------------------------------------------------------
def filter_report_sections(sections: List) -> List:
  """Pytest's captured-output sections of a test report, filtered alike."""
  if verbose_requested([]):
    return sections
  return [(title, LineFilter().filter_text(text)) for title, text in sections]


if __name__ == "__main__":
  _filter_main()
