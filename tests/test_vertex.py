"""Vertex AI: the compiled PipelineSpec mirrors the local DAG; cloud variants;
a dry-run submission that makes no network call."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from models import config as config_lib
from models import names
from pipeline import configs, runs, vertex_runner
from pipeline.pipeline import MAE_RUN_FN, PREPROCESSING_FN, PROBE_RUN_FN, create_pipeline

IMAGE = "us-central1-docker.pkg.dev/test-project/mae-tfx/mae-tfx:test"
CLOUD = [
    "--project",
    "test-project",
    "--bucket",
    "gs://test-bucket",
    "--image",
    IMAGE,
    "--region",
    "europe-west4",
]
RESOLVER = "latest_blessed_model_resolver"


def _compile(tmp_path, *flags):
  path = str(tmp_path / "spec.json")
  vertex_runner.main(["compile", *CLOUD, "--output", path, *flags])
  with open(path) as f:
    return json.load(f), path


def _parameters(spec, task):
  params = spec["pipelineSpec"]["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
  return {k: next(iter(v["runtimeValue"]["constantValue"].values())) for k, v in params.items()}


def _executor_args(spec, task):
  return spec["pipelineSpec"]["deploymentSpec"]["executors"][f"{task}_executor"]["container"][
      "args"
  ]


@pytest.fixture(scope="module")
def default_spec(tmp_path_factory):
  return _compile(tmp_path_factory.mktemp("vertex"))


def test_spec_parses_and_has_the_local_dag(default_spec, tmp_path):
  spec, _ = default_spec
  parsed = pipeline_spec_pb2.PipelineSpec()
  json_format.ParseDict(spec["pipelineSpec"], parsed)  # a valid kfp PipelineSpec
  assert parsed.pipeline_info.name == names.PIPELINE_NAME
  local = create_pipeline(configs.PipelineConfig(data_root=str(tmp_path), output_dir=str(tmp_path)))
  # The same DAG, search steps included; only the local Pusher takes the
  # index (the Vertex one deploys the model to an endpoint).
  local_deps = {c.id: {u.id for u in c.upstream_nodes} for c in local.components}
  local_deps["Pusher"].remove("SearchIndexer")
  # Vertex AI compiles only TFX's own resolvers: both model resolvers are the
  # latest blessed model, read nothing of this run (pipeline/pipeline.py).
  local_deps["warm_start_model_resolver"].remove("Cifar10ExampleGen")
  local_deps[RESOLVER].remove("linear_probe")
  # The compiler splits the latest-blessed-model resolver into two resolver steps.
  tasks = parsed.root.dag.tasks
  compiled = {name.split("-")[0]: set() for name in tasks}
  for name, task in tasks.items():
    compiled[name.split("-")[0]] |= {d.split("-")[0] for d in task.dependent_tasks}
  assert compiled == local_deps
  executors = spec["pipelineSpec"]["deploymentSpec"]["executors"].values()
  assert {e["container"]["image"] for e in executors if "container" in e} == {IMAGE}
  assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://test-bucket/mae-tfx/pipeline_root"


def test_trainers_carry_run_fns_and_the_run_config(default_spec):
  spec, _ = default_spec
  for task, run_fn in (("mae_pretrain", MAE_RUN_FN), ("linear_probe", PROBE_RUN_FN)):
    params = _parameters(spec, task)
    assert params["run_fn"] == run_fn
    custom = json.loads(params["custom_config"])
    run_config = config_lib.from_custom_config(custom)
    assert run_config.profile == "full"
    assert custom[config_lib.CHECKPOINT_ROOT_KEY] == "gs://test-bucket/mae-tfx/checkpoints"
  assert _parameters(spec, "Transform")["preprocessing_fn"] == PREPROCESSING_FN
  assert (
      "linear_probe" in spec["pipelineSpec"]["root"]["dag"]["tasks"]["Evaluator"]["dependentTasks"]
  )


def test_cloud_variants_vertex_training_endpoint_pusher_and_dataflow(default_spec):
  spec, _ = default_spec
  custom = json.loads(_parameters(spec, "mae_pretrain")["custom_config"])
  assert custom["ai_platform_enable_vertex"] is True
  assert custom["ai_platform_vertex_region"] == "europe-west4"
  pool = custom["ai_platform_training_args"]["job_spec"]["worker_pool_specs"][0]
  assert pool["machine_spec"] == {
      "machine_type": "n1-standard-8",
      "accelerator_type": "NVIDIA_TESLA_T4",
      "accelerator_count": 1,
  }
  assert pool["container_spec"]["image_uri"] == IMAGE
  assert "google_cloud_ai_platform.trainer.executor" in " ".join(
      _executor_args(spec, "mae_pretrain")
  )
  pusher = json.loads(_parameters(spec, "Pusher")["custom_config"])
  assert pusher["ai_platform_serving_args"]["endpoint_name"] == "mae-tfx-embeddings"
  assert pusher["ai_platform_serving_args"]["project_id"] == "test-project"
  assert pusher["ai_platform_vertex_container_image_uri"].startswith(
      "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu"
  )
  assert "google_cloud_ai_platform.pusher.executor" in " ".join(_executor_args(spec, "Pusher"))
  for task in ("StatisticsGen", "Transform", "Evaluator", "CorpusEmbedder"):
    args = _executor_args(spec, task)
    assert "--runner=DataflowRunner" in args and "--temp_location=gs://test-bucket/tmp" in args
    assert "--autoscaling_algorithm=THROUGHPUT_BASED" in args
  # The corpus is embedded on Dataflow and written for Vector Search too.
  embedder = _parameters(spec, "CorpusEmbedder")
  assert (int(embedder["vector_search_json"]), embedder["corpus_splits"]) == (1, "train")
  search = json.loads(_parameters(spec, "SearchIndexer")["search_config"])
  assert search["vector_search_json"] is True and search["min_recall"] == 0.95


def test_more_gpus_select_mirrored_and_local_variants_compile(tmp_path):
  spec, _ = _compile(
      tmp_path,
      "--accelerator-type",
      "NVIDIA_TESLA_A100",
      "--accelerator-count",
      "4",
      "--vertex-training",
      "false",
      "--dataflow",
      "false",
  )
  custom = json.loads(_parameters(spec, "mae_pretrain")["custom_config"])
  assert config_lib.from_custom_config(custom).runtime.strategy == "mirrored"
  assert "ai_platform_training_args" not in custom  # Trainer inside the pipeline step
  assert "tfx.components.trainer.executor" in " ".join(_executor_args(spec, "mae_pretrain"))
  assert "--runner=DataflowRunner" not in _executor_args(spec, "Transform")


def test_trainer_replicas_make_a_multi_worker_job(tmp_path):
  spec, _ = _compile(tmp_path, "--trainer-replicas", "3")
  custom = json.loads(_parameters(spec, "mae_pretrain")["custom_config"])
  chief, workers = custom["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]
  assert (chief["replica_count"], workers["replica_count"]) == (1, 2)
  assert chief["container_spec"] == workers["container_spec"] == {"image_uri": IMAGE}
  assert config_lib.from_custom_config(custom).runtime.strategy == "multi_worker"


def test_missing_settings_are_named(tmp_path, monkeypatch):
  for name in ("PROJECT", "BUCKET", "IMAGE"):
    monkeypatch.delenv(f"MAE_TFX_{name}", raising=False)
  with pytest.raises(ValueError, match=r"needs \['project', 'bucket', 'image'\]"):
    vertex_runner.main(["compile", "--output", str(tmp_path / "x.json")])
  with pytest.raises(ValueError, match="bucket must be a gs:// URI"):
    vertex_runner.main(["compile", *CLOUD[:2], "--bucket", "/local", "--image", IMAGE])


BLOCK_NETWORK = r"""
import os, socket
def _blocked(*args, **kwargs):
  with open(os.environ["NETWORK_ATTEMPTS"], "a") as f:
    f.write(repr(args[1:3]) + "\n")
  raise OSError(101, "Network is unreachable (blocked by the test)")
socket.socket.connect = socket.socket.connect_ex = _blocked
socket.create_connection = socket.getaddrinfo = _blocked
"""


def test_dry_run_submission_prints_the_job_without_network(default_spec, tmp_path):
  _, spec_path = default_spec
  (tmp_path / "sitecustomize.py").write_text(BLOCK_NETWORK)
  attempts = tmp_path / "attempts.log"
  env = dict(
      os.environ,
      PYTHONPATH=os.pathsep.join([str(tmp_path), names.PROJECT_DIR]),
      NETWORK_ATTEMPTS=str(attempts),
  )
  run = subprocess.run(
      [
          sys.executable,
          "-m",
          "pipeline.vertex_runner",
          "submit",
          "--dry-run",
          "--spec",
          spec_path,
          *CLOUD,
      ],
      cwd=names.PROJECT_DIR,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert not attempts.exists(), attempts.read_text()
  out = run.stdout
  request = json.loads(out[out.index("{") :])
  assert request["parent"] == "projects/test-project/locations/europe-west4"
  job = request["pipeline_job"]
  assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://test-bucket/mae-tfx/pipeline_root"
  assert set(job["pipelineSpec"]["root"]["dag"]["tasks"]) >= {
      "mae_pretrain",
      "Pusher",
      "CorpusEmbedder",
  }
  # Then the Vector Search index over the corpus the run will write.
  index = request["then_vector_search_index"]
  assert index["url"] == (
      "https://europe-west4-aiplatform.googleapis.com/v1/projects/"
      "test-project/locations/europe-west4/indexes"
  )
  config = index["body"]["metadata"]["config"]
  assert config["dimensions"] == config_lib.get_profile("full").embedding_dim
  assert index["body"]["metadata"]["contentsDeltaUri"].startswith(
      "gs://test-bucket/mae-tfx/pipeline_root/"
  )
  # The sitecustomize really blocks: a real submission attempt fails on it.
  probe = subprocess.run(
      [sys.executable, "-c", "import socket; socket.create_connection(('example.com', 443))"],
      env=env,
      capture_output=True,
      text=True,
  )
  assert probe.returncode != 0 and "Network is unreachable" in probe.stderr


def test_dockerfile_and_cloudbuild_install_this_project_with_the_pins():
  """No Docker daemon here, so the image is checked against the project: the
  TFX base matches the installed TFX, every package is copied, the pins are
  used and Keras 2 is selected."""
  import tfx

  with open(os.path.join(names.PROJECT_DIR, "Dockerfile")) as f:
    dockerfile = f.read()
  assert f"FROM tensorflow/tfx:{tfx.__version__}\n" in dockerfile
  packages = {
      d
      for d in os.listdir(names.PROJECT_DIR)
      if os.path.isfile(os.path.join(names.PROJECT_DIR, d, "__init__.py"))
      and d not in ("tests", "benchmarks")
  }
  assert packages == {"pipeline", "components", "models", "serving"}
  for package in packages | {"schemas"}:
    assert f"COPY {package}/ {package}/" in dockerfile
  assert "pip install --no-cache-dir -c requirements.lock -e ." in dockerfile
  # pyproject.toml makes that a PEP 517/660 install, not `setup.py develop`.
  assert "COPY requirements.lock setup.py pyproject.toml" in dockerfile
  assert "TF_USE_LEGACY_KERAS=1" in dockerfile
  assert "TF_CPU_ALLOCATOR_USE_BFC=true" in dockerfile  # the caching CPU allocator
  with open(os.path.join(names.PROJECT_DIR, "cloudbuild.yaml")) as f:
    cloudbuild = f.read()
  assert '["build", "-t", "${_IMAGE}", "."]' in cloudbuild and 'images: ["${_IMAGE}"]' in cloudbuild


def test_an_image_folder_on_gcs_compiles(tmp_path):
  """The folder is not listed when compiling (no credentials needed): its
  format is given, its reviewed schema is the image's copy under schemas/."""
  spec, _ = _compile(
      tmp_path,
      "--data",
      "gs://test-bucket/photos",
      "--data-format",
      "image_folder",
      "--schema",
      names.SCHEMA_PATH,
      "--unlabeled",
      "gs://test-bucket/unlabeled",
      "--skip-bad-images",
  )
  assert spec["pipelineSpec"]["pipelineInfo"]["name"] == "mae-tfx-photos"
  params = _parameters(spec, "ImageFolderExampleGen")
  assert params["input_base"] == "gs://test-bucket/photos"
  options = json.loads(params["custom_config"])["custom_config"]["value"]
  assert options["unlabeled_base"] == "gs://test-bucket/unlabeled"
  assert options["skip_bad_images"] is True
  assert _parameters(spec, "ImportSchemaGen")["schema_file"] == "/mae-tfx/schemas/schema.pbtxt"
  # The MAE pretrains on the unlabeled split too; the probe on train only.
  assert "unlabeled" in json.dumps(_parameters(spec, "mae_pretrain")["train_args"])
  assert "unlabeled" not in json.dumps(_parameters(spec, "linear_probe")["train_args"])
  with pytest.raises(ValueError, match="needs --data .* and --schema"):
    _compile(tmp_path, "--data-format", "image_folder")


def test_index_request_from_a_runs_vector_search_corpus(smoke_run, tmp_path):
  """The smoke run writes its corpus for Vector Search (as every Vertex run
  does): the same records as the local index's, one JSON line each, the class
  and the span as restricts entries; `index --dry-run` makes the creation
  request of it."""
  from models.examples import read_embeddings
  from models.vector_search import CLASS_NAMESPACE, FOLDER, SPAN_NAMESPACE
  # The first run's (later ones may be cached, or not blessed by design).
  first = runs.list_runs(smoke_run.metadata_path, smoke_run.pipeline_name)[0]["run_id"]
  rows = {
      r["node"]: r
      for r in runs.last_run_executions(smoke_run.metadata_path, smoke_run.pipeline_name, first)
  }
  embeddings = rows["CorpusEmbedder"]["outputs"][names.EMBEDDINGS_TYPE][0]
  assert rows["CorpusEmbedder"]["output_properties"][names.EMBEDDINGS_TYPE][0][
      "vector_search"
  ] == os.path.join(embeddings, FOLDER)
  lines = []
  for path in sorted(glob.glob(os.path.join(embeddings, FOLDER, "*.json"))):
    with open(path) as f:
      lines += [json.loads(line) for line in f]
  corpus = read_embeddings(names.split_files(embeddings, "train"))
  by_id = {line["id"]: line for line in lines}
  assert len(lines) == len(by_id) == len(corpus.ids) > 0
  assert set(corpus.spans) == {"0"}  # CIFAR-10 is span 0
  for image_id, class_name, vector in zip(corpus.ids, corpus.class_names, corpus.vectors):
    line = by_id[image_id]
    assert line["restricts"] == [
        {"namespace": CLASS_NAMESPACE, "allow": [class_name]},
        {"namespace": SPAN_NAMESPACE, "allow": ["0"]},
    ]
    np.testing.assert_allclose(line["embedding"], vector, rtol=1e-6)

  request = vertex_runner.main(
      ["index", "--dry-run", "--embeddings", embeddings, "--profile", "smoke", *CLOUD]
  )
  metadata = request["body"]["metadata"]
  assert metadata["contentsDeltaUri"] == os.path.join(embeddings, FOLDER)
  assert metadata["config"]["dimensions"] == smoke_run.run_config.embedding_dim
  assert metadata["config"]["distanceMeasureType"] == "DOT_PRODUCT_DISTANCE"
  assert metadata["config"]["featureNormType"] == "UNIT_L2_NORM"
  assert request["body"]["indexUpdateMethod"] == "BATCH_UPDATE"
  # Another profile's embedding size, or a folder without the corpus: named.
  with pytest.raises(ValueError, match=r"embeddings of \d+ values, the configured model gives"):
    vertex_runner.main(["index", "--dry-run", "--embeddings", embeddings, *CLOUD])
  with pytest.raises(FileNotFoundError, match="no \\*.json files"):
    vertex_runner.main(["index", "--dry-run", "--embeddings", str(tmp_path), *CLOUD])


def test_spans_compile_and_a_schedule_is_dry_run(tmp_path):
  """Image folders on GCS arriving as span-<N>/ folders: the driver finds the
  newest span when the job runs; the schedule request is built offline."""
  flags = (
      "--data",
      "gs://test-bucket/arrivals",
      "--data-format",
      "image_folder",
      "--spans",
      "--schema",
      names.SCHEMA_PATH,
  )
  spec, path = _compile(tmp_path, *flags)
  params = _parameters(spec, "ImageFolderExampleGen")
  assert json.loads(params["input_config"])["splits"][0]["pattern"] == "span-{SPAN}/*/*"
  assert "range_config" not in params  # the newest span
  assert json.loads(params["custom_config"])["custom_config"]["value"]["spans"] is True
  pinned, _ = _compile(tmp_path, *flags, "--span", "3")
  assert json.loads(_parameters(pinned, "ImageFolderExampleGen")["range_config"]) == {
      "static_range": {"start_span_number": 3, "end_span_number": 3}
  }
  request = vertex_runner.main(
      ["schedule", "--dry-run", "--spec", path, "--cron", "0 6 * * *", *CLOUD, *flags]
  )
  schedule = request["schedule"]
  assert schedule["cron"] == "0 6 * * *" and schedule["max_concurrent_run_count"] == 1
  job = schedule["create_pipeline_job_request"]["pipeline_job"]
  assert "ImageFolderExampleGen" in job["pipelineSpec"]["root"]["dag"]["tasks"]
  with pytest.raises(SystemExit, match="schedule needs --cron"):
    vertex_runner.main(["schedule", "--dry-run", "--spec", path, *CLOUD, *flags])
