"""The code's structure: `models/` is a library that imports no TFX, the
server loads neither tf.Transform nor the pipeline, the benchmarks call the
library rather than the Trainer adapters, and shared names have one home.

Imports are checked in a fresh interpreter, where nothing else loaded them.
"""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from models import config as config_lib
from models import names

IMPORTS = r"""
import importlib, json, pkgutil, sys
import models

def loaded(prefixes):
  return sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in prefixes))

result = {}
for m in ("serving.server", "serving.embed", "serving.search"):
  importlib.import_module(m)
result["serving"] = loaded(["tfx", "tensorflow_transform", "pipeline", "components",
                            "models.mae", "models.signatures"])
library = [m.name for m in pkgutil.iter_modules(models.__path__, "models.")]
for m in library:
  importlib.import_module(m)
result["library"] = library
result["library_tfx"] = loaded(["tfx", "components", "pipeline"])
for m in ("probe_quality", "probe_ablation", "train_throughput", "serving", "roofline",
          "pretrain_memory"):
  importlib.import_module("benchmarks." + m)
result["benchmarks_adapters"] = loaded(["components", "tfx.components"])
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def imports():
  run = subprocess.run(
      [sys.executable, "-c", IMPORTS],
      cwd=names.PROJECT_DIR,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_library_imports_no_tfx(imports):
  assert {
      "models.mae",
      "models.engine_pretrain",
      "models.engine_probe",
      "models.evaluation",
      "models.names",
  } <= set(imports["library"])
  assert imports["library_tfx"] == []


def test_the_server_loads_no_transform_model_or_pipeline(imports):
  assert imports["serving"] == []


def imported_modules(package: str):
  """{module a file of `package` imports, anywhere in it (inside functions
  too): [file:line, ...]}."""
  found = {}
  folder = os.path.join(names.PROJECT_DIR, package)
  for name in sorted(os.listdir(folder)):
    if not name.endswith(".py"):
      continue
    with open(os.path.join(folder, name)) as f:
      tree = ast.parse(f.read(), name)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        modules = [node.module]
      else:
        continue
      for module in modules:
        found.setdefault(module, []).append(f"{package}/{name}:{node.lineno}")
  return found


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("serving", ("pipeline", "components", "tfx", "tensorflow_transform")),
        ("models", ("pipeline", "components", "tfx", "serving")),
    ],
)
def test_no_import_anywhere_in_a_package_reaches_the_layers_above_it(package, forbidden):
  """Checked in the source, so an import inside a function that no test
  happens to call counts as much as one at the top."""
  found = imported_modules(package)
  assert "os" in found  # the scan sees imports at all
  offending = {m: where for m, where in found.items() if m.split(".")[0] in forbidden}
  assert offending == {}


def test_the_scan_counts_an_import_inside_a_function(tmp_path, monkeypatch):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "a.py").write_text("import os\ndef f():\n  from pipeline import runs\n")
  monkeypatch.setattr(names, "PROJECT_DIR", str(tmp_path))
  assert imported_modules("pkg") == {"os": ["pkg/a.py:1"], "pipeline": ["pkg/a.py:3"]}


def test_benchmarks_call_the_library_not_the_trainer_adapters(imports):
  assert imports["benchmarks_adapters"] == []


def test_pushed_versions_ignore_staging_and_other_entries():
  entries = [
      "1700000002/",
      "1700000001",
      ".staging-1700000003-42",
      "README",
      "12a",
      "",
      "²",
      "1700000010",
  ]
  assert names.pushed_versions(entries) == [1700000001, 1700000002, 1700000010]


def test_default_paths_follow_the_output_env(monkeypatch, tmp_path):
  monkeypatch.setenv(names.OUTPUT_ENV, str(tmp_path))
  assert names.metadata_path() == os.path.join(str(tmp_path), "metadata.sqlite")
  assert names.serving_model_dir() == os.path.join(
      str(tmp_path), "serving_model", names.PIPELINE_NAME
  )
  monkeypatch.delenv(names.OUTPUT_ENV)
  assert names.default_output_dir() == os.path.join(names.PROJECT_DIR, "outputs")


def test_unknown_profile_is_refused_naming_the_known_ones():
  with pytest.raises(
      ValueError,
      match=r"Unknown profile 'gpu'; known profiles: \['cpu', 'cpu-long', 'full', 'smoke'\]",
  ):
    config_lib.get_profile("gpu")
  from pipeline import configs

  with pytest.raises(ValueError, match="Unknown profile 'gpu'"):
    configs.PipelineConfig(data_root="/nowhere", profile="gpu")


def test_the_runner_refuses_an_unknown_profile_before_touching_data(tmp_path):
  from pipeline import local_runner

  with pytest.raises(ValueError, match="Unknown profile 'laptop'"):
    local_runner.main(
        [
            "--profile",
            "laptop",
            "--data",
            str(tmp_path / "absent"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
  assert not (tmp_path / "out").exists()


def test_a_profile_holds_its_gate_and_beam_args_and_trainers_get_the_rest():
  cpu = config_lib.get_profile(
      "cpu", {"evaluation": {"min_accuracy": 0.5}, "beam": {"pipeline_args": ["--a=1"]}}
  )
  assert cpu.evaluation.min_accuracy == 0.5 and cpu.evaluation.max_accuracy_drop == 0.01
  assert cpu.beam.pipeline_args == ("--a=1",)
  assert config_lib.get_profile("smoke").evaluation.min_accuracy == 0.05
  trainer = cpu.trainer_config()
  assert set(trainer) == {"profile", "model", "pretrain", "probe", "runtime", "data"}
  # What a Trainer rebuilds from custom_config trains exactly the same.
  rebuilt = config_lib.RunConfig.from_dict(json.loads(json.dumps(trainer)))
  assert rebuilt.trainer_config() == trainer
  with pytest.raises(ValueError, match=r"Unknown config section 'gate'"):
    config_lib.get_profile("cpu", {"gate": {"min_accuracy": 0.5}})
  with pytest.raises(ValueError, match=r"Unknown EvaluationConfig field\(s\) \['min_acc'\]"):
    config_lib.get_profile("cpu", {"evaluation": {"min_acc": 0.5}})


def test_the_model_follows_data_image_size_which_must_fit_the_patches():
  cfg = config_lib.get_profile("smoke", {"data": {"image_size": 48}})
  assert cfg.data.image_size == cfg.model.image_size == 48
  assert cfg.model.num_patches == (48 // 4) ** 2
  with pytest.raises(
      ValueError, match="data.image_size 30 must be a positive multiple of model.patch_size 4"
  ):
    config_lib.get_profile("smoke", {"data": {"image_size": 30}})
  with pytest.raises(ValueError, match="model.image_size follows data.image_size"):
    config_lib.get_profile("smoke", {"model": {"image_size": 48}})


@pytest.mark.parametrize("name", ["pipeline_walkthrough.ipynb", "explore_embeddings.ipynb"])
def test_committed_notebooks_show_a_real_run_and_name_no_machine(name):
  """`make notebooks` saved them with the outputs of a `cpu`-profile run of
  all of CIFAR-10, so a reader sees everything without running anything."""
  path = os.path.join(names.PROJECT_DIR, "notebooks", name)
  assert os.path.getsize(path) < 3e6
  with open(path) as f:
    nb = json.load(f)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert all(c["outputs"] for c in code), "a code cell without outputs"
  outputs = [o for c in code for o in c["outputs"]]
  assert not [o for o in outputs if o["output_type"] == "error"]
  text = json.dumps(outputs)
  for machine in ("/work/", "/tmp/", "/root/", "/home/", "/Users/"):
    assert machine not in text
  assert "50000 train images" in text or "(5000, 640)" in text  # a full cpu-profile run


def test_the_readme_pictures_exist():
  with open(os.path.join(names.PROJECT_DIR, "README.md")) as f:
    readme = f.read()
  pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
  assert len(pictures) >= 2
  for picture in pictures:
    assert os.path.isfile(os.path.join(names.PROJECT_DIR, picture)), picture


def test_a_second_run_on_the_same_outputs_is_refused_naming_the_first(tmp_path):
  """One run per output folder: the second is refused at once, naming the
  first; a run killed with -9 leaves no stale lock."""
  import signal
  import subprocess
  import time
  from pipeline import local_runner

  holder = subprocess.Popen(
      [
          sys.executable,
          "-c",
          "import sys, time\nfrom pipeline import local_runner\n"
          "with local_runner.output_lock(sys.argv[1]):\n  print('held', flush=True)\n"
          "  time.sleep(600)",
          str(tmp_path),
      ],
      cwd=names.PROJECT_DIR,
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with pytest.raises(
        SystemExit,
        match=rf"in use by another pipeline run \(pid {holder.pid} "
        rf"on .*: -c {re.escape(str(tmp_path))}\)",
    ):
      local_runner.main(
          ["--profile", "smoke", "--data", str(tmp_path / "absent"), "--output-dir", str(tmp_path)]
      )
    assert time.monotonic() - start < 5
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with local_runner.output_lock(str(tmp_path)):
    pass
