"""Runs the pipeline locally with BeamDagRunner and SQLite MLMD.

  python -m pipeline.local_runner --profile cpu --data ../shared/data/cifar10

`--data` (or $MAE_TFX_CIFAR10) points at a local copy; without it the
official archive is downloaded once into <output>/cache.
"""

import argparse
import json
import logging
import os
import sys

from tfx import v1 as tfx
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from models import config as model_config
from models import names
from pipeline import configs, data_source, report
from pipeline.pipeline import create_pipeline


def run(config: configs.PipelineConfig) -> None:
  """Runs the DAG in this process; raises if any component fails."""
  metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(
      config.metadata_path)
  BeamDagRunner().run(create_pipeline(config, metadata))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--profile", default=os.environ.get(names.PROFILE_ENV, "cpu"))
  p.add_argument("--data", default=os.environ.get(names.CIFAR10_ENV),
                 help="CIFAR-10 source: extracted folder, .tar.gz, or folder "
                      "of .tar.gz.part-* pieces (default: download)")
  p.add_argument("--output-dir", default=names.default_output_dir())
  p.add_argument("--overrides", default="{}",
                 help='JSON {section: {field: value}} over the profile, e.g. '
                      '\'{"pretrain": {"epochs": 20}}\'')
  p.add_argument("--min-accuracy", type=float, default=None,
                 help="Evaluator floor on test accuracy (default: the profile's "
                      "evaluation.min_accuracy)")
  p.add_argument("--max-accuracy-drop", type=float, default=None,
                 help="largest allowed drop against the latest blessed model "
                      "(default: the profile's evaluation.max_accuracy_drop)")
  p.add_argument("--no-cache", action="store_true")
  return p.parse_args(argv)


def main(argv=None) -> configs.PipelineConfig:
  logging.basicConfig(level=logging.INFO)
  args = parse_args(sys.argv[1:] if argv is None else argv)
  overrides = json.loads(args.overrides)
  gate = {k: v for k, v in (("min_accuracy", args.min_accuracy),
                            ("max_accuracy_drop", args.max_accuracy_drop))
          if v is not None}
  if gate:
    overrides.setdefault("evaluation", {}).update(gate)
  model_config.get_profile(args.profile, overrides)   # refuse a bad one at once
  data_root = data_source.resolve_cifar10(
      args.data, os.path.join(args.output_dir, "cache"))
  config = configs.PipelineConfig(
      data_root=data_root, output_dir=os.path.abspath(args.output_dir),
      profile=args.profile, overrides=overrides, enable_cache=not args.no_cache)
  print(f"mae-tfx: profile {config.profile}, data {data_root}, "
        f"output {config.output_dir}", flush=True)
  run(config)
  print(report.format_report(config.metadata_path, config.pipeline_name), flush=True)
  return config


if __name__ == "__main__":
  main()
