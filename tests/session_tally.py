"""What a test session started: pipeline runs and server processes.

`make test` prints the tally under the slowest durations, so a new test that
pays for another pipeline run or server shows in every CI log. It also keeps
the tiers honest: a test that starts either without its marker (`pipeline`,
`server`; `make test-fast` leaves those out) fails, naming what it started.

Counted where they start: the DAG runner's `run` in this process (a run
refused before its DAG starts is none), and `python -m
pipeline.local_runner` / `python -m serving.server` (or
`pipeline.tensorboard_logs`, TensorBoard's) children of it (each process of
pytest-xdist counts its own; the controller adds them).
"""

import collections
import subprocess
from typing import Counter, Optional, Sequence

import pytest

PIPELINE_IN_PROCESS = "pipeline runs in the test process"
PIPELINE_PROCESS = "pipeline runs as processes"
SERVER_PROCESS = "server processes"
# What a child started with `python -m <module>` is, by its module.
_CHILD_KINDS = {
    "pipeline.local_runner": PIPELINE_PROCESS,
    "serving.server": SERVER_PROCESS,
    "pipeline.tensorboard_logs": SERVER_PROCESS,  # TensorBoard's
}
# The marker a test needs to start each kind.
MARKER = {PIPELINE_IN_PROCESS: "pipeline", PIPELINE_PROCESS: "pipeline", SERVER_PROCESS: "server"}

_WORKER_OUTPUT_KEY = "mae_tfx_session_tally"


def child_kind(args) -> Optional[str]:
  """The tally's kind of a child started with `args` (Popen's), or None."""
  argv: Sequence = [args] if isinstance(args, (str, bytes)) else list(args)
  argv = [a if isinstance(a, str) else str(a) for a in argv]
  for i, arg in enumerate(argv[:-1]):
    if arg == "-m":
      return _CHILD_KINDS.get(argv[i + 1])
  return None


class SessionTally:
  """Counts starts in the session and in the test running now."""

  def __init__(self):
    self.session: Counter[str] = collections.Counter()
    self.test: Counter[str] = collections.Counter()

  def started(self, kind: str) -> None:
    """Counts one start of `kind`."""
    self.session[kind] += 1
    self.test[kind] += 1

  def install(self) -> None:
    """Wraps `subprocess.Popen.__init__` and the DAG runner's `run`."""
    tally = self
    popen_init = subprocess.Popen.__init__

    def counting_init(popen, args, *rest, **kwargs):
      kind = child_kind(args)
      if kind:
        tally.started(kind)
      popen_init(popen, args, *rest, **kwargs)

    subprocess.Popen.__init__ = counting_init

    from pipeline.beam_runner import LoggedBeamDagRunner

    run = LoggedBeamDagRunner.run

    def counting_run(runner, pipeline, *rest, **kwargs):
      tally.started(PIPELINE_IN_PROCESS)
      return run(runner, pipeline, *rest, **kwargs)

    LoggedBeamDagRunner.run = counting_run


TALLY = SessionTally()


def pytest_configure(config):
  """Installs the counters (in each pytest-xdist process too)."""
  TALLY.install()
  config.pluginmanager.register(_Reporter(config), "mae_tfx_session_tally_reporter")


class _Reporter:
  """Per-test checks, the xdist hand-over and the summary line."""

  def __init__(self, config):
    self.config = config
    self.from_workers: Counter[str] = collections.Counter()

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(self, item, nextitem):  # pylint: disable=unused-argument
    """Counts what `item` (its setup, call and teardown) starts."""
    TALLY.test.clear()
    yield

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_makereport(self, item, call):
    """Fails a test that started what its markers do not allow."""
    outcome = yield
    report = outcome.get_result()
    if call.when != "teardown" or report.failed:
      return
    unmarked = {
        kind: n
        for kind, n in TALLY.test.items()
        if n and item.get_closest_marker(MARKER[kind]) is None
    }
    if unmarked:
      report.outcome = "failed"
      report.longrepr = (
          f"{item.nodeid} started {dict(unmarked)} without the marker "
          f"{sorted({MARKER[k] for k in unmarked})}: mark it (or its module) so that "
          "`make test-fast` leaves it out"
      )

  def pytest_sessionfinish(self, session):
    """An xdist worker hands its tally to the controller."""
    if hasattr(self.config, "workeroutput"):
      self.config.workeroutput[_WORKER_OUTPUT_KEY] = dict(TALLY.session)

  @pytest.hookimpl(optionalhook=True)
  def pytest_testnodedown(self, node, error):  # pylint: disable=unused-argument
    """The controller adds a finished worker's tally."""
    self.from_workers.update(getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY, {}))

  def pytest_terminal_summary(self, terminalreporter):
    """One line: what the session started."""
    if hasattr(self.config, "workeroutput"):
      return
    total = TALLY.session + self.from_workers
    pipelines = total[PIPELINE_IN_PROCESS] + total[PIPELINE_PROCESS]
    terminalreporter.write_line(
        f"session started {pipelines} pipeline run(s) ({total[PIPELINE_IN_PROCESS]} in the "
        f"test process, {total[PIPELINE_PROCESS]} as processes) and {total[SERVER_PROCESS]} "
        "server process(es)"
    )
