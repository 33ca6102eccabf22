"""Runs the pipeline locally with BeamDagRunner and SQLite MLMD.

  python -m pipeline.local_runner --profile cpu --data ../shared/data/cifar10
  python -m pipeline.local_runner --data ~/photos [--unlabeled ~/more_photos] \
      [--search-corpus ~/catalogue]

`--data` is CIFAR-10 (a local copy of the archive or its folder; without
--data, or $MAE_TFX_CIFAR10, the official archive is downloaded once into
<output>/cache), a folder of class folders of images, or a folder of TFRecord
files: told apart by what is there (`pipeline.data_source`), or either laid
out in span-<N>/ folders, of which a run ingests the newest (or --span N).
For data other
than CIFAR-10 the first run writes the dataset's schema for review
(schemas/<folder>/schema.pbtxt, or --schema); later runs are held to it. Each
data set is its own pipeline, `mae-tfx-<folder>` (CIFAR-10: `mae-tfx`), with
its own runs, blessed models and served versions
(<output>/serving_model/<pipeline>/). The search index pushed with the model
covers every image accepted so far: the train split (and --unlabeled) of every
span the gate passed, plus the images of --search-corpus, less --removed ids.

The run log (stderr) says what runs, its progress and outcome; the report
(stdout) what the run did. `-v` / MAE_TFX_VERBOSE=1 shows every log line.
"""

import argparse
import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Dict, Iterator, TextIO

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
from tfx import v1 as tfx

from components import search_corpus_gen
from models import config as model_config
from models import image_files, names
from models.run_log import log
from pipeline import configs, data_source, report, runs
from pipeline.beam_runner import LoggedBeamDagRunner
from pipeline.pipeline import create_pipeline

LOCK_FILE = ".pipeline.lock"  # in the output folder: who is running there
_held_locks: Dict[str, TextIO] = {}


class RunInProgress(RuntimeError):
  """Another pipeline run is writing to the same output folder."""


@contextlib.contextmanager
def output_lock(output_dir: str) -> Iterator[None]:
  """Holds the output folder for one run at a time: a second run on it is
  refused at once, naming the first. An flock, so a run that is killed
  (even with -9) leaves nothing stuck: the kernel releases it with the
  process. Re-entrant within a process (`main` holds it around `run`)."""
  path = os.path.join(os.path.abspath(output_dir), LOCK_FILE)
  if path in _held_locks:
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  f = open(path, "a+")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "a process that has not said who it is yet"
    f.close()
    raise RunInProgress(
        f"{os.path.dirname(path)} is in use by another pipeline run ({holder}); wait "
        f"for it to finish, or give this run another --output-dir "
        f"(${names.OUTPUT_ENV})"
    ) from None
  f.seek(0)
  f.truncate()
  f.write(
      f"pid {os.getpid()} on {socket.gethostname()}, started "
      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n"
  )
  f.flush()
  _held_locks[path] = f
  try:
    yield
  finally:
    del _held_locks[path]
    f.truncate(0)
    f.close()  # releases the lock


def run(config: configs.PipelineConfig) -> None:
  """Runs the DAG in this process, holding its output folder; raises if any
  component fails, or `RunInProgress` if another run holds the folder."""
  metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
  with output_lock(config.output_dir):
    abandoned = runs.mark_abandoned_executions(config.metadata_path)
    if abandoned:
      log.info(
          "A killed run left %s unfinished: marked FAILED in MLMD; this run redoes "
          "them (the MAE from its last epoch checkpoint)",
          ", ".join(abandoned),
      )
    start = time.monotonic()
    LoggedBeamDagRunner().run(create_pipeline(config, metadata))
    log.info(
        "Pipeline %s finished in %s",
        config.pipeline_name,
        run_log.duration(time.monotonic() - start),
    )
    states = {
        n: r["state"]
        for n, r in runs.last_run_nodes(config.metadata_path, config.pipeline_name).items()
    }
    if all(
        states.get(n) == "CACHED"
        for n in (names.MAE_TRAINER, names.PROBE_TRAINER, "Evaluator", "Pusher")
    ):
      log.info(
          "Nothing new: the data and settings of an earlier run, whose outputs came "
          "from the cache; nothing was trained, embedded or pushed"
      )


def parse_args(argv):
  """The local runner's command line (`argv` without the program name)."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--profile", default=os.environ.get(names.PROFILE_ENV, "cpu"))
  p.add_argument(
      "--data",
      default=os.environ.get(names.CIFAR10_ENV),
      help="CIFAR-10 (extracted folder, .tar.gz, or folder of .tar.gz.part-* "
      "pieces; default: download), a folder <root>/<class>/<image> or "
      "<root>/train|test/<class>/<image>, or a folder of TFRecord files",
  )
  configs.add_source_arguments(p)
  p.add_argument("--output-dir", default=names.default_output_dir())
  p.add_argument(
      "--overrides",
      default="{}",
      help="JSON {section: {field: value}} over the profile, e.g. "
      '\'{"pretrain": {"epochs": 20}}\'',
  )
  p.add_argument(
      "--min-accuracy",
      type=float,
      default=None,
      help="Evaluator floor on test accuracy (default: the profile's evaluation.min_accuracy)",
  )
  p.add_argument(
      "--max-accuracy-drop",
      type=float,
      default=None,
      help="largest allowed drop against the model blessed before "
      "(default: the profile's evaluation.max_accuracy_drop)",
  )
  p.add_argument("--no-cache", action="store_true")
  p.add_argument(
      "-v",
      "--verbose",
      action="store_true",
      help="show every log line, third-party notices and INFO logs included "
      "(also MAE_TFX_VERBOSE=1)",
  )
  return p.parse_args(argv)


def overrides_from_args(args) -> dict:
  """--overrides with the gate flags folded in; a bad profile is refused."""
  overrides = json.loads(args.overrides)
  gate = {
      k: v
      for k, v in (
          ("min_accuracy", args.min_accuracy),
          ("max_accuracy_drop", args.max_accuracy_drop),
      )
      if v is not None
  }
  if gate:
    overrides.setdefault("evaluation", {}).update(gate)
  model_config.get_profile(args.profile, overrides)  # refuse a bad one at once
  return overrides


def main(argv=None) -> configs.PipelineConfig:
  """Runs the pipeline `argv` describes and prints its report; returns its config.

  A run already holding the output folder ends this one with SystemExit.
  """
  args = parse_args(sys.argv[1:] if argv is None else argv)
  overrides = overrides_from_args(args)
  try:
    with output_lock(args.output_dir):  # before anything is written there
      config = pipeline_config(args, overrides)
      log.info(
          "Pipeline %s: profile %s, data %s (%s%s%s), schema %s, output %s",
          config.pipeline_name,
          config.profile,
          config.data_root,
          config.source.format,
          "" if config.source.span is None else f", span {config.source.span}",
          "".join(
              f", {name} {folder}"
              for name, folder in (
                  ("unlabeled", args.unlabeled),
                  ("search corpus", args.search_corpus),
              )
              if folder
          ),
          config.schema_path,
          config.output_dir,
      )
      run(config)
  except RunInProgress as e:
    raise SystemExit(f"mae-tfx: {e}") from None
  print(report.format_report(config.metadata_path, config.pipeline_name), flush=True)
  return config


def pipeline_config(args, overrides) -> configs.PipelineConfig:
  """The run the arguments describe: the data found (CIFAR-10 extracted if
  need be), its schema (written for review on a new data set) and its
  pipeline."""
  data_format = data_source.detect_format(args.data) if args.data else data_source.CIFAR10
  for flag in ("unlabeled", "search_corpus"):
    folder = getattr(args, flag)
    if folder:
      folder = os.path.abspath(os.path.expanduser(folder))
      if not os.path.isdir(folder):
        raise SystemExit(f"--{flag.replace('_', '-')} {folder}: not a folder")
      setattr(args, flag, folder)
  if args.span is not None and not args.data:
    raise SystemExit(f"--span {args.span}: the CIFAR-10 archive is one span")
  # The span this run ingests (the newest unless given), pinned for the driver.
  args.span = data_source.span_of(args.data, args.span) if args.data else None
  source = configs.source_config(args, data_format, spans=args.span is not None)  # checked
  if args.search_corpus:
    try:
      search_corpus_gen.check_corpus(args.search_corpus)
    except ValueError as e:
      raise SystemExit(f"--search-corpus {e}") from None
    source.search_corpus_fingerprint = image_files.folder_fingerprint(args.search_corpus)
  if data_format == data_source.CIFAR10:
    data_root = data_source.resolve_cifar10(args.data, os.path.join(args.output_dir, "cache"))
    schema_path = args.schema or names.SCHEMA_PATH
  else:
    data_root = os.path.abspath(os.path.expanduser(args.data))
    # What this run ingests: the source, or the span's folder.
    ingested = data_root if args.span is None else image_files.span_root(data_root, args.span)
    schema_path = os.path.abspath(args.schema or data_source.dataset_schema_path(data_root))
    if data_source.ensure_schema(
        ingested, data_format, schema_path, args.test_fraction, args.label_feature
    ):
      log.info(
          "Wrote the schema of %s to %s: review it and check it in; runs of this "
          "dataset are held to it",
          ingested,
          schema_path,
      )
    source.fingerprint = image_files.folder_fingerprint(ingested) + image_files.folder_fingerprint(
        args.unlabeled
    )
  return configs.PipelineConfig(
      data_root=data_root,
      source=source,
      schema_path=schema_path,
      pipeline_name=names.pipeline_name_for(
          None if data_format == data_source.CIFAR10 else os.path.basename(data_root)
      ),
      output_dir=os.path.abspath(args.output_dir),
      profile=args.profile,
      overrides=overrides,
      enable_cache=not args.no_cache,
  )


if __name__ == "__main__":
  main()
