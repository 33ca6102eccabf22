"""TensorBoard on a local run's logs (`make tensorboard`).

  python -m pipeline.tensorboard_logs [--output-dir outputs] [--port 6006]

Its logdir is the pipeline root (`names.pipeline_root`), where each
Trainer's ModelRun folder is a run (`mae_pretrain/model_run/<execution>/`
and `linear_probe/model_run/<execution>/`: their train and validation
curves, the MAE's reconstructions, img/s and learning rate), and so is the
Embedding Projector folder of each data set's newest push
(`projector/<pipeline>/<version>/`, written by the Pusher:
models/projector.py). On loopback, as `make serve`; `--host 0.0.0.0`
offers it to the network. TensorBoard's log goes through the run-log
filter (models/run_log.py); -v shows everything.
"""

import argparse
import glob
import importlib.metadata
import os
import sys
import types
from typing import List

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported (TensorBoard imports it): its start-up
  # lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
from models import names, projector
from models.run_log import log
from pipeline import runs

DEFAULT_PORT = 6006  # TensorBoard's own


def projector_runs(output_dir: str) -> List[str]:
  """The Embedding Projector folders the Pusher wrote in `output_dir`, as
  TensorBoard names its runs (`projector/<pipeline>/<version>`)."""
  folders = os.path.join(names.projector_dir(output_dir, "*"), "*")
  configs = glob.glob(os.path.join(folders, projector.CONFIG_FILE))
  return sorted(
      os.path.relpath(os.path.dirname(c), names.pipeline_root(output_dir)) for c in configs
  )


def _pkg_resources_stand_in() -> None:
  """TensorBoard 2.16 (the newest TensorFlow 2.16 takes) imports
  pkg_resources, which setuptools no longer ships since 81, for two things:
  its plugins' entry points (the Embedding Projector is one) and comparing
  its data server's version. Both are in the standard library and
  `packaging` now; this module stands in for it when it is missing."""
  try:
    import pkg_resources  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    return
  except ImportError:
    pass
  from packaging import version  # pylint: disable=import-outside-toplevel

  stand_in = types.ModuleType("pkg_resources")
  stand_in.parse_version = version.parse
  stand_in.iter_entry_points = lambda group: [
      types.SimpleNamespace(name=e.name, resolve=e.load)
      for e in importlib.metadata.entry_points(group=group)
  ]
  sys.modules["pkg_resources"] = stand_in


def serve(logdir: str, host: str, port: int) -> int:
  """Runs TensorBoard on `logdir` until interrupted, as its own command
  does (`tensorboard.main`); returns its exit code."""
  _pkg_resources_stand_in()
  from absl import app  # pylint: disable=import-outside-toplevel
  from tensorboard import default, main_lib, program  # pylint: disable=import-outside-toplevel

  main_lib.global_init()
  board = program.TensorBoard(plugins=default.get_plugins())

  def flags(argv):  # TensorBoard's flags from here, not from this command's line
    return board.configure(argv[:1], logdir=logdir, host=host, port=port)

  try:
    app.run(board.main, flags_parser=flags)
  except SystemExit as e:
    return e.code or 0
  return 0


def main(argv=None) -> int:
  """Opens TensorBoard on the output folder's pipeline root; refuses a
  folder without runs, naming it."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  runs.add_output_dir_argument(p)
  p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
  p.add_argument(
      "--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)"
  )
  p.add_argument("-v", "--verbose", action="store_true", help="show every log line")
  args = p.parse_args(argv)
  output_dir = os.path.abspath(args.output_dir)
  logdir = names.pipeline_root(output_dir)
  if not os.path.isdir(logdir):
    raise SystemExit(
        f"No runs in {args.output_dir}: no {logdir}. Run `make pipeline` first, or name the "
        f"run's output folder (--output-dir, ${names.OUTPUT_ENV})"
    )
  found = projector_runs(output_dir)
  for run in found:
    log.info("Embedding Projector: run %s (TensorBoard's Projector tab)", run)
  if not found:
    log.info(
        "No Embedding Projector files in %s yet: the Pusher writes them for each "
        "version it pushes (search.projector_points)",
        logdir,
    )
  log.info("TensorBoard on %s", logdir)
  return serve(logdir, args.host, args.port)


if __name__ == "__main__":
  sys.exit(main())
