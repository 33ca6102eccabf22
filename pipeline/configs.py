"""Pipeline configuration: where a run reads and writes, which profile it
runs, and (for Google Cloud) where and on what.

What a profile means (model, schedule, runtime, the Evaluator's gate, Beam
arguments) is the profile registry, `models/config.py`; names and paths
shared with the Trainers, the server and the report are `models/names.py`.
Every value here has a default and an environment variable; the runners'
flags override both.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional

from models import config as model_config
from models import names
from pipeline import data_source


def _env(name: str, default: str, cast=str):
  """A field read from $MAE_TFX_<name> when the config is created."""

  def read():
    value = os.environ.get(f"MAE_TFX_{name}", default)
    return value in ("1", "true", "True") if cast is bool else cast(value)

  return dataclasses.field(default_factory=read)


@dataclasses.dataclass
class VertexConfig:
  """Where and on what the pipeline runs on Google Cloud. Every field has a
  MAE_TFX_<FIELD> environment variable (e.g. MAE_TFX_PROJECT); the Vertex
  runner's flags override them."""

  project: str = _env("PROJECT", "")
  region: str = _env("REGION", "us-central1")
  bucket: str = _env("BUCKET", "")  # gs://<bucket>, holds data and artifacts
  image: str = _env("IMAGE", "")  # this project's container (Dockerfile)
  service_account: str = _env("SERVICE_ACCOUNT", "")
  # Trainers as Vertex AI custom jobs (False: inside the pipeline's own container).
  vertex_training: bool = _env("VERTEX_TRAINING", "1", bool)
  trainer_machine_type: str = _env("TRAINER_MACHINE_TYPE", "n1-standard-8")
  accelerator_type: str = _env("ACCELERATOR_TYPE", "NVIDIA_TESLA_T4")  # "" for none
  accelerator_count: int = _env("ACCELERATOR_COUNT", "1", int)
  # Machines training in step (MultiWorkerMirroredStrategy): a chief pool of
  # one and a worker pool of the rest, each replica running the same run_fn.
  trainer_replicas: int = _env("TRAINER_REPLICAS", "1", int)
  # Beam components (StatisticsGen, Transform, Evaluator...) on Dataflow.
  dataflow: bool = _env("DATAFLOW", "1", bool)
  dataflow_machine_type: str = _env("DATAFLOW_MACHINE_TYPE", "n1-standard-4")
  dataflow_max_workers: int = _env("DATAFLOW_MAX_WORKERS", "8", int)
  # Pusher: a Vertex AI endpoint serving with a prebuilt TF container.
  endpoint_name: str = _env("ENDPOINT_NAME", "mae-tfx-embeddings")
  serving_image: str = _env(
      "SERVING_IMAGE", "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
  )
  serving_machine_type: str = _env("SERVING_MACHINE_TYPE", "n1-standard-4")

  def validate(self) -> "VertexConfig":
    """Returns this config; raises ValueError naming a missing or inconsistent field."""
    missing = [f for f in ("project", "bucket", "image") if not getattr(self, f)]
    if missing:
      raise ValueError(
          f"Vertex AI config needs {missing} (flags --{missing[0]} ... or "
          f"MAE_TFX_{missing[0].upper()} ...)"
      )
    if not self.bucket.startswith("gs://"):
      raise ValueError(f"bucket must be a gs:// URI, got {self.bucket!r}")
    if self.trainer_replicas < 1:
      raise ValueError(f"trainer_replicas must be at least 1, got {self.trainer_replicas}")
    if self.accelerator_count < 0 or (self.accelerator_type and self.accelerator_count < 1):
      raise ValueError(
          f"accelerator_count {self.accelerator_count} does not fit "
          f"accelerator_type {self.accelerator_type!r}"
      )
    return self

  def beam_pipeline_args(self, temp_location: str) -> Optional[List[str]]:
    """Dataflow's arguments; None (the profile's) when Dataflow is off."""
    if not self.dataflow:
      return None
    return [
        "--runner=DataflowRunner",
        f"--project={self.project}",
        f"--region={self.region}",
        f"--temp_location={temp_location}",
        f"--machine_type={self.dataflow_machine_type}",
        "--autoscaling_algorithm=THROUGHPUT_BASED",
        f"--max_num_workers={self.dataflow_max_workers}",
        f"--sdk_container_image={self.image}",
        "--experiments=use_runner_v2",
    ]

  def worker_pool_specs(self) -> List[Dict[str, Any]]:
    """Vertex Training worker pools running this project's image: the chief,
    and with trainer_replicas > 1 a pool of the other workers (Vertex sets
    TF_CONFIG on each; runtime.strategy is then multi_worker)."""
    machine: Dict[str, Any] = {"machine_type": self.trainer_machine_type}
    if self.accelerator_type:
      machine.update(
          accelerator_type=self.accelerator_type, accelerator_count=self.accelerator_count
      )
    pools = [
        {"machine_spec": machine, "replica_count": 1, "container_spec": {"image_uri": self.image}}
    ]
    if self.trainer_replicas > 1:
      pools.append(
          {
              "machine_spec": dict(machine),
              "replica_count": self.trainer_replicas - 1,
              "container_spec": {"image_uri": self.image},
          }
      )
    return pools

  def trainer_custom_config(self) -> Dict[str, Any]:
    """custom_config entries of the Vertex AI Training Trainer."""
    from tfx.v1.extensions import google_cloud_ai_platform as gcp

    job_spec: Dict[str, Any] = {"worker_pool_specs": self.worker_pool_specs()}
    if self.service_account:
      job_spec["service_account"] = self.service_account
    return {
        gcp.ENABLE_VERTEX_KEY: True,
        gcp.VERTEX_REGION_KEY: self.region,
        gcp.TRAINING_ARGS_KEY: {"project": self.project, "job_spec": job_spec},
    }

  def pusher_custom_config(self) -> Dict[str, Any]:
    """custom_config of the Vertex AI endpoint Pusher."""
    from tfx.v1.extensions import google_cloud_ai_platform as gcp

    return {
        gcp.ENABLE_VERTEX_KEY: True,
        gcp.VERTEX_REGION_KEY: self.region,
        gcp.VERTEX_CONTAINER_IMAGE_URI_KEY: self.serving_image,
        gcp.SERVING_ARGS_KEY: {
            "project_id": self.project,
            "endpoint_name": self.endpoint_name,
            "machine_type": self.serving_machine_type,
            "min_replica_count": 1,
            "max_replica_count": 2,
        },
    }


@dataclasses.dataclass
class SourceConfig:
  """What ExampleGen ingests (`pipeline.data_source` tells the formats apart)."""

  format: str = "cifar10"  # cifar10 | image_folder | tfrecord
  # A folder of images (any depth) pretraining also learns from, as the
  # `unlabeled` split; the probe and the Evaluator use the labeled splits.
  unlabeled_root: Optional[str] = None
  test_fraction: float = 0.2  # a source without train/test folders
  skip_bad_images: bool = False  # skip and list them, instead of stopping
  image_feature: str = "image"  # tfrecord: the features holding the
  label_feature: str = "label"  # image bytes and the int64 class id
  # A digest of the local input files: a changed file re-runs ExampleGen.
  fingerprint: str = ""
  # Images (a folder, any depth, or TFRecord files) the search index covers
  # beside the train split, the model not trained on them
  # (components/search_corpus_gen.py), and the digest of its local files.
  search_corpus: Optional[str] = None
  search_corpus_fingerprint: str = ""
  # The data is laid out in span-<N>/ folders: a run ingests the newest span,
  # or `span` (ExampleGen's driver resolves it; TFX's {SPAN} convention).
  spans: bool = False
  span: Optional[int] = None
  # Ids left out of every search index from now on, one a line (`read_removed`).
  removed_ids: str = ""

  def __post_init__(self):
    if self.format not in data_source.FORMATS:
      raise ValueError(f"data format {self.format!r} is not one of {data_source.FORMATS}")
    if self.span is not None and not self.spans:
      raise ValueError(f"span {self.span} given for data not laid out in spans")
    if self.spans and self.format == data_source.CIFAR10:
      raise ValueError(
          "the CIFAR-10 archive is one span: spans take an image-folder or TFRecord source"
      )
    if self.unlabeled_root and self.format == data_source.CIFAR10:
      raise ValueError(
          "--unlabeled takes an image-folder or TFRecord source, not the "
          "CIFAR-10 archive (write CIFAR-10 out as class folders to add one)"
      )
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def add_source_arguments(parser) -> None:
  """The runners' flags for SourceConfig's fields, and --schema."""
  parser.add_argument(
      "--unlabeled", default=None, help="a folder of images (any depth) for MAE pretraining only"
  )
  parser.add_argument(
      "--skip-bad-images",
      action="store_true",
      help="skip unreadable image files and list them (default: stop, naming the file)",
  )
  parser.add_argument(
      "--test-fraction",
      type=float,
      default=0.2,
      help="share of the test split when the data has no train/test folders",
  )
  parser.add_argument(
      "--image-feature", default="image", help="TFRecord: the feature holding the encoded image"
  )
  parser.add_argument(
      "--label-feature", default="label", help="TFRecord: the feature holding the int64 class id"
  )
  parser.add_argument(
      "--search-corpus",
      default=None,
      help="images the search index also covers, beside the train split: a "
      "folder of images (any depth) or of TFRecord files",
  )
  parser.add_argument(
      "--span",
      type=int,
      default=None,
      help="data laid out in span-<N>/ folders: ingest span N (default: the newest)",
  )
  parser.add_argument(
      "--removed",
      default=None,
      help=f"ids to take out of search for good, one a line (default: <data>/{names.REMOVED_FILE} "
      "when there is one); the next pushed index leaves them out without retraining",
  )
  parser.add_argument(
      "--schema",
      default=None,
      help="the dataset's schema (default: CIFAR-10's curated one, else "
      "schemas/<data folder>/schema.pbtxt)",
  )


def source_config(args, data_format: str, spans: bool = False) -> SourceConfig:
  """SourceConfig from the flags of `add_source_arguments`."""
  return SourceConfig(
      format=data_format,
      unlabeled_root=args.unlabeled,
      search_corpus=args.search_corpus,
      test_fraction=args.test_fraction,
      skip_bad_images=args.skip_bad_images,
      image_feature=args.image_feature,
      label_feature=args.label_feature,
      spans=spans,
      span=args.span,
      removed_ids=read_removed(args.removed or _default_removed(args.data)),
  )


def _default_removed(data: Optional[str]) -> Optional[str]:
  if not data or "://" in data:
    return None
  path = os.path.join(os.path.expanduser(data), names.REMOVED_FILE)
  return path if os.path.isfile(path) else None


def read_removed(path: Optional[str]) -> str:
  """The ids in a removals file (one a line; blank lines and `#` comments
  skipped), sorted and newline-joined: '' for none. A missing file given
  explicitly is an error naming it."""
  if not path:
    return ""
  try:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise SystemExit(f"--removed {path}: cannot be read ({e.strerror})") from None
  ids = {line.strip() for line in lines}
  return "\n".join(sorted(i for i in ids if i and not i.startswith("#")))


@dataclasses.dataclass
class PipelineConfig:
  """One pipeline run's data, outputs, profile and overrides; with `vertex`, the cloud variant."""

  data_root: str  # cifar-10-batches-py/, a folder of images or of TFRecords
  source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
  output_dir: str = dataclasses.field(default_factory=names.default_output_dir)
  profile: str = dataclasses.field(default_factory=lambda: os.environ.get(names.PROFILE_ENV, "cpu"))
  pipeline_name: str = names.PIPELINE_NAME
  schema_path: str = names.SCHEMA_PATH  # CIFAR-10's; another data set's its own
  enable_cache: bool = True
  # {section: {field: value}} over the profile, e.g. {"evaluation":
  # {"min_accuracy": 0.5}} or {"pretrain": {"epochs": 20}}.
  overrides: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  # None: the profile's (`beam.pipeline_args`); the Vertex runner sets Dataflow's.
  beam_pipeline_args: Optional[List[str]] = None
  vertex: Optional[VertexConfig] = None  # set: compile the Google Cloud variant

  def __post_init__(self):
    _ = self.run_config  # an unknown profile or override fails here, naming it

  @property
  def pipeline_root(self) -> str:
    """Where TFX writes the components' artifacts."""
    return names.pipeline_root(self.output_dir)

  @property
  def metadata_path(self) -> str:
    """The MLMD SQLite database of the runs written to `output_dir`."""
    return names.metadata_path(self.output_dir)

  @property
  def serving_model_dir(self) -> str:
    """The Pusher's base directory: one numeric sub-directory per pushed version."""
    return names.serving_model_dir(self.output_dir, self.pipeline_name)

  @property
  def projector_dir(self) -> str:
    """Where the Pusher writes the Embedding Projector files of its newest push."""
    return names.projector_dir(self.output_dir, self.pipeline_name)

  @property
  def checkpoint_root(self) -> str:
    """Where the MAE Trainer keeps pretraining checkpoints, so a re-run resumes."""
    return os.path.join(self.output_dir, "checkpoints")

  @property
  def run_config(self) -> model_config.RunConfig:
    """The profile, with `overrides` applied."""
    return model_config.get_profile(self.profile, self.overrides)

  @property
  def beam_args(self) -> List[str]:
    """Beam's arguments: `beam_pipeline_args` when set, else the profile's."""
    if self.beam_pipeline_args is not None:
      return list(self.beam_pipeline_args)
    return list(self.run_config.beam.pipeline_args)

  def trainer_custom_config(self) -> Dict[str, Any]:
    """custom_config of both Trainers: the run config and the checkpoint root."""
    return {
        model_config.RUN_CONFIG_KEY: self.run_config.trainer_config(),
        model_config.CHECKPOINT_ROOT_KEY: self.checkpoint_root,
    }
