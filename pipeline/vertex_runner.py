"""Compiles the pipeline for Vertex AI Pipelines and submits it.

  python -m pipeline.vertex_runner compile --project P --bucket gs://B \
      --image REGION-docker.pkg.dev/P/mae-tfx/mae-tfx:TAG [--output mae-tfx-vertex.json]
  python -m pipeline.vertex_runner submit --project P --bucket gs://B \
      --image ... --spec mae-tfx-vertex.json [--dry-run]
  python -m pipeline.vertex_runner schedule --project P --bucket gs://B \
      --image ... --spec mae-tfx-vertex.json --cron "0 6 * * *" [--dry-run]
  python -m pipeline.vertex_runner index --project P --bucket gs://B \
      --image ... --embeddings gs://B/.../CorpusEmbedder_.../embeddings [--dry-run]

The same `create_pipeline` as the local runner, compiled by TFX's
KubeflowV2DagRunner to a PipelineJob JSON whose every step runs this
project's container image. Cloud variants, from `VertexConfig`: Trainers as
Vertex AI Training jobs (worker pool with GPUs), Beam components on Dataflow
(ExampleGen reads the images in Dataflow's workers),
the Pusher deploying to a Vertex AI endpoint, and the CorpusEmbedder writing
the corpus in Vertex AI Vector Search's input format, which `index` creates
a Vector Search index from once the run is done. Each Google Cloud setting
(`VertexConfig`: project, region, bucket, image, machines, endpoint, ...) and
the profile also have a MAE_TFX_<NAME> environment variable; the data flags
do not. Values are fixed at compile time: no
RuntimeParameters (see tensorflow/tfx issue 7733 for TFX 1.16).
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict, Optional

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import tensorflow as tf

from models import names, vector_search
from pipeline import configs, data_source
from pipeline.pipeline import create_pipeline

DEFAULT_SPEC = "mae-tfx-vertex.json"
CONTAINER_PROJECT_DIR = "/mae-tfx"  # the Dockerfile's WORKDIR


def vertex_config(args: argparse.Namespace) -> configs.VertexConfig:
  """The environment's VertexConfig with the flags that were given applied."""
  given = {
      f.name: getattr(args, f.name)
      for f in dataclasses.fields(configs.VertexConfig)
      if getattr(args, f.name, None) is not None
  }
  return dataclasses.replace(configs.VertexConfig(), **given).validate()


def pipeline_config(args: argparse.Namespace) -> configs.PipelineConfig:
  """The Google Cloud run the flags describe: data and outputs under the bucket,
  the schema as the container holds it, the distribution strategy the machines
  call for, and the corpus written for Vector Search."""
  vertex = vertex_config(args)
  overrides = json.loads(args.overrides)
  if vertex.trainer_replicas > 1:  # machines in step, each with all its GPUs
    overrides.setdefault("runtime", {}).setdefault("strategy", "multi_worker")
  elif vertex.accelerator_count > 1:  # all GPUs of the worker: one replica each
    overrides.setdefault("runtime", {}).setdefault("strategy", "mirrored")
  overrides.setdefault("search", {}).setdefault("vector_search_json", True)
  bucket = vertex.bucket.rstrip("/")
  source = configs.source_config(args, args.data_format, spans=args.spans)
  if source.format != data_source.CIFAR10 and not (args.data and args.schema):
    raise ValueError(
        f"--data-format {source.format} needs --data (its gs:// folder) and "
        "--schema (the dataset's reviewed schema: a local run writes one)"
    )
  return configs.PipelineConfig(
      data_root=args.data or f"{bucket}/data/cifar-10-batches-py",
      source=source,
      schema_path=container_path(args.schema or names.SCHEMA_PATH),
      pipeline_name=names.pipeline_name_for(
          None if source.format == data_source.CIFAR10 else args.data.rstrip("/").rsplit("/", 1)[-1]
      ),
      output_dir=f"{bucket}/{names.PIPELINE_NAME}",
      profile=args.profile,
      overrides=overrides,
      enable_cache=not args.no_cache,
      vertex=vertex,
      beam_pipeline_args=vertex.beam_pipeline_args(f"{bucket}/tmp"),
  )


def container_path(path: str) -> str:
  """Where the image (Dockerfile: WORKDIR /mae-tfx, schemas/ copied) holds a
  file of this project; a gs:// path as it is."""
  if "://" in path:
    return path
  relative = os.path.relpath(os.path.abspath(path), names.PROJECT_DIR)
  if relative.startswith(".."):
    raise ValueError(
        f"{path} is outside the project, so not in its image: put it "
        "under schemas/ (and rebuild the image) or on gs://"
    )
  return f"{CONTAINER_PROJECT_DIR}/{relative}"


def compile_pipeline(config: configs.PipelineConfig, output_path: str) -> str:
  """Writes the PipelineJob JSON to `output_path`; returns it."""
  from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

  runner = v2.KubeflowV2DagRunner(
      config=v2.KubeflowV2DagRunnerConfig(default_image=config.vertex.image),
      output_dir=os.path.dirname(os.path.abspath(output_path)),
      output_filename=os.path.basename(output_path),
  )
  runner.run(create_pipeline(config))  # Vertex keeps its own metadata
  return output_path


def pipeline_job(spec_path: str, config: configs.PipelineConfig, credentials=None):
  """The aiplatform.PipelineJob for the compiled spec (no network until submit)."""
  from google.cloud import aiplatform

  vertex = config.vertex
  return aiplatform.PipelineJob(
      display_name=config.pipeline_name,
      template_path=spec_path,
      pipeline_root=config.pipeline_root,
      enable_caching=config.enable_cache,
      project=vertex.project,
      location=vertex.region,
      credentials=credentials,
  )


# Where a run's CorpusEmbedder writes the corpus for Vector Search, known
# once the run has made it (Vertex AI names artifact folders by job and task).
CONTENTS_AFTER_THE_RUN = (
    "{pipeline_root}/<project number>/<pipeline job>/"
    "CorpusEmbedder_<task>/embeddings/" + vector_search.FOLDER
)


def vector_search_index(
    config: configs.PipelineConfig, embeddings: str, check: bool = True
) -> Dict[str, Any]:
  """create_tree_ah_index's arguments for the corpus a CorpusEmbedder wrote
  (`embeddings`: its artifact folder, or the vector_search folder in it).
  With `check`, a folder that can be read is checked against the configured
  embedding (not one a run has yet to write)."""
  contents = embeddings.rstrip("/")
  if os.path.basename(contents) != vector_search.FOLDER:
    contents = f"{contents}/{vector_search.FOLDER}"
  dimensions = config.run_config.embedding_dim
  if check:
    check_vector_search_folder(contents, dimensions)
  return vector_search.index_arguments(
      f"{config.pipeline_name}-embeddings", contents, dimensions, config.run_config.search.k
  )


def check_vector_search_folder(contents: str, dimensions: int) -> None:
  """Raises unless `contents` holds Vector Search files whose (first) embedding
  has `dimensions` values; a folder that cannot be read (e.g. gs:// without
  credentials) is left unchecked, with a line on stderr."""
  try:
    files = sorted(tf.io.gfile.glob(f"{contents}/*{vector_search.FILE_SUFFIX}"))
  except tf.errors.OpError as e:  # e.g. gs:// without credentials (a dry run)
    print(f"vertex_runner: {contents} not checked ({type(e).__name__})", file=sys.stderr)
    return
  if not files:
    raise FileNotFoundError(
        f"{contents}: no *{vector_search.FILE_SUFFIX} files. Give the CorpusEmbedder's "
        "embeddings artifact of a run with search.vector_search_json (the Vertex default)"
    )
  with tf.io.gfile.GFile(files[0]) as f:
    first = json.loads(f.readline())
  if len(first["embedding"]) != dimensions:
    raise ValueError(
        f"{files[0]}: embeddings of {len(first['embedding'])} values, the "
        f"configured model gives {dimensions}: same --profile/--overrides "
        "as the run, please"
    )


def create_index(
    config: configs.PipelineConfig, embeddings: str, dry_run: bool, check: bool = True
) -> Dict:
  """Creates the Vector Search index, or (dry run) returns its request."""
  vertex = config.vertex
  arguments = vector_search_index(config, embeddings, check)
  if dry_run:
    return vector_search.create_index_request(vertex.project, vertex.region, arguments)
  index = vector_search.create_index(vertex.project, vertex.region, arguments)
  return {"index": index.resource_name}


def submit(spec_path: str, config: configs.PipelineConfig, dry_run: bool) -> Dict:
  """Submits the job, or (dry run) validates it and returns what it would
  send, and the Vector Search index request that follows the run."""
  if not os.path.isfile(spec_path):
    raise FileNotFoundError(f"{spec_path} not found: run `compile` first")
  with open(spec_path) as f:
    spec = json.load(f)
  validate_spec(spec, config.vertex.image)
  if dry_run:
    from google.auth.credentials import AnonymousCredentials

    job = pipeline_job(spec_path, config, credentials=AnonymousCredentials())
    request = job.to_dict()  # the PipelineJob resource `submit` would create
    after = CONTENTS_AFTER_THE_RUN.format(pipeline_root=config.pipeline_root)
    return {
        "parent": f"projects/{config.vertex.project}/locations/{config.vertex.region}",
        "service_account": config.vertex.service_account or None,
        "pipeline_job": request,
        "then_vector_search_index": create_index(config, after, dry_run=True, check=False),
    }
  job = pipeline_job(spec_path, config)
  job.submit(service_account=config.vertex.service_account or None)
  return {"pipeline_job": job.resource_name}


def schedule(spec_path: str, config: configs.PipelineConfig, cron: str, dry_run: bool) -> Dict:
  """Schedules the compiled job on Vertex AI (a PipelineJob schedule, one
  run at a time), or (dry run) validates it and returns the request."""
  if not os.path.isfile(spec_path):
    raise FileNotFoundError(f"{spec_path} not found: run `compile` first")
  with open(spec_path) as f:
    validate_spec(json.load(f), config.vertex.image)
  display_name = f"{config.pipeline_name}-schedule"
  if dry_run:
    from google.auth.credentials import AnonymousCredentials

    job = pipeline_job(spec_path, config, credentials=AnonymousCredentials())
    parent = f"projects/{config.vertex.project}/locations/{config.vertex.region}"
    return {
        "parent": parent,
        "schedule": {
            "display_name": display_name,
            "cron": cron,
            "max_concurrent_run_count": 1,
            "create_pipeline_job_request": {"parent": parent, "pipeline_job": job.to_dict()},
        },
    }
  created = pipeline_job(spec_path, config).create_schedule(
      cron=cron,
      display_name=display_name,
      max_concurrent_run_count=1,
      service_account=config.vertex.service_account or None,
  )
  return {"schedule": created.resource_name}


def validate_spec(spec: Dict, image: Optional[str] = None) -> None:
  """Parses the compiled JSON as a kfp PipelineSpec; checks it runs `image`."""
  from google.protobuf import json_format
  from kfp.pipeline_spec import pipeline_spec_pb2

  if "pipelineSpec" not in spec:
    raise ValueError("not a compiled PipelineJob: no 'pipelineSpec' field")
  pipeline_spec = pipeline_spec_pb2.PipelineSpec()
  json_format.ParseDict(spec["pipelineSpec"], pipeline_spec)
  images = {
      e["container"]["image"]
      for e in spec["pipelineSpec"]["deploymentSpec"]["executors"].values()
      if "container" in e
  }
  if image and images != {image}:
    raise ValueError(f"the spec runs images {sorted(images)}, expected only {image}")


def parse_args(argv):
  """The Vertex runner's command line (`argv` without the program name)."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("command", choices=["compile", "submit", "schedule", "index"])
  p.add_argument("--spec", default=DEFAULT_SPEC, help="compiled PipelineJob JSON")
  p.add_argument("--output", default=None, help="compile: where to write (default --spec)")
  p.add_argument(
      "--dry-run",
      action="store_true",
      help="submit, index: validate and print the request, no network",
  )
  p.add_argument(
      "--cron",
      default=None,
      help='schedule: when to run, a cron line in UTC, e.g. "0 6 * * *"; '
      "each run ingests the newest span of --data (--spans)",
  )
  p.add_argument(
      "--embeddings",
      default=None,
      help="index: a run's CorpusEmbedder embeddings artifact (gs://...)",
  )
  p.add_argument("--profile", default=os.environ.get(names.PROFILE_ENV, "full"))
  p.add_argument("--overrides", default="{}", help="JSON {section: {field: value}}")
  p.add_argument(
      "--data", default=None, help="the data on GCS (default <bucket>/data/cifar-10-batches-py)"
  )
  p.add_argument(
      "--data-format",
      default=data_source.CIFAR10,
      choices=data_source.FORMATS,
      help="what --data holds (a gs:// folder is not listed when compiling)",
  )
  p.add_argument(
      "--spans",
      action="store_true",
      help="--data is laid out in span-<N>/ folders: each run ingests the "
      "newest span (or --span N), resolved when it runs",
  )
  configs.add_source_arguments(p)
  p.add_argument("--no-cache", action="store_true")
  for field in dataclasses.fields(configs.VertexConfig):
    flag = "--" + field.name.replace("_", "-")
    if field.type in (bool, "bool"):
      p.add_argument(
          flag,
          dest=field.name,
          default=None,
          type=lambda v: v.lower() in ("1", "true", "yes"),
          help=f"true/false (MAE_TFX_{field.name.upper()})",
      )
    else:
      p.add_argument(
          flag,
          dest=field.name,
          default=None,
          type=int if field.type in (int, "int") else str,
          help=f"(MAE_TFX_{field.name.upper()})",
      )
  return p.parse_args(argv)


def main(argv=None) -> Dict:
  """Runs the command `argv` names (compile, submit, schedule, index), prints
  what it did and returns it as a dict."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  config = pipeline_config(args)
  if args.command == "compile":
    path = compile_pipeline(config, args.output or args.spec)
    print(
        f"vertex_runner: compiled {config.pipeline_name} (profile {config.profile}, "
        f"image {config.vertex.image}) to {path}",
        flush=True,
    )
    return {"spec": path}
  if args.command == "index":
    if not args.embeddings:
      raise SystemExit("index needs --embeddings: the CorpusEmbedder's embeddings artifact")
    result = create_index(config, args.embeddings, args.dry_run)
  elif args.command == "schedule":
    if not args.cron:
      raise SystemExit('schedule needs --cron, e.g. --cron "0 6 * * *"')
    result = schedule(args.spec, config, args.cron, args.dry_run)
  else:
    result = submit(args.spec, config, args.dry_run)
  if args.dry_run:
    print("vertex_runner: dry run, nothing submitted. Request:")
  print(json.dumps(result, indent=2, sort_keys=True), flush=True)
  return result


if __name__ == "__main__":
  main()
