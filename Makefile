# mae-tfx: `make pipeline` runs the pipeline, `make test` the tests.
# Both create the virtual environment (.venv, Python 3.10, the pinned set in
# requirements.lock) when it is missing or out of date.

PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) \
                         $(shell command -v python3.10 2>/dev/null))
VENV      ?= .venv
PY        := $(VENV)/bin/python
PROFILE   ?= cpu
# The local CIFAR-10 copy when there is one; otherwise the runner downloads
# the official archive once into outputs/cache. Or your own images: a folder
# of class folders, or of TFRecord files (docs/your_own_images.md).
DATA      ?= $(firstword $(MAE_TFX_CIFAR10) $(wildcard ../shared/data/cifar10))
UNLABELED ?=
# Images the search index covers instead of the train split (a folder, or TFRecords).
SEARCH_CORPUS ?=
# Ids to take out of search for good, one a line (default: $(DATA)/removed.txt).
REMOVED   ?=
ARGS      ?=
PYTEST_ARGS ?=

# TensorFlow's environment is set by models/__init__.py, which every entry
# point (`make tensorboard`'s too) imports first; exported here too for tools
# run outside the packages (a bare python). What the log leaves out, and why:
# models/run_log.py; MAE_TFX_VERBOSE=1 (or ARGS=-v) shows everything.
export TF_USE_LEGACY_KERAS := 1
export TF_CPU_ALLOCATOR_USE_BFC := true

.PHONY: pipeline test test-fast test-all browser lint format report notebooks serve tensorboard image vertex-compile vertex-submit lock clean

$(VENV)/.installed: setup.py pyproject.toml requirements.lock
	@test -n "$(PYTHON310)" || { echo "Python 3.10 not found: install it (pyenv install 3.10.13) or set PYTHON310=/path/to/python3.10"; exit 1; }
	@echo "Installing the pinned packages (requirements.lock) into $(VENV): once, a few minutes"
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	@$(PY) -m pip install -qq "pip==24.3.1" "wheel==0.48.0" "setuptools==84.2.1"
	@$(PY) -m pip install -qq -c requirements.lock -e ".[test]"
	@touch $@

# The run log (stderr) starts by naming what it runs.
pipeline: $(VENV)/.installed
	@$(PY) -m pipeline.local_runner --profile $(PROFILE) $(if $(DATA),--data $(DATA)) \
	    $(if $(UNLABELED),--unlabeled $(UNLABELED)) $(if $(SEARCH_CORPUS),--search-corpus $(SEARCH_CORPUS)) \
	    $(if $(REMOVED),--removed $(REMOVED)) $(ARGS)

# The test tiers (docs/testing.md), each after the style check:
#   test-fast  every test that runs no pipeline and starts no server (the inner loop)
#   test       those, the pipeline and server tests: what CI runs
#   test-all   those and the slow full-data checks
# Two worker processes (pytest-xdist), each taking whole test files, so a
# file's own pipeline run or server is made once; the smoke run is made
# once for both (tests/conftest.py). Each run ends with the slowest tests
# and what it started.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: lint
	$(PYTEST) -m "not slow and not pipeline and not server" $(PYTEST_ARGS)

test: lint browser
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-all: lint browser
	$(PYTEST) $(PYTEST_ARGS)

# The search page's browser test drives Debian's headless Chromium through
# chromedriver: installed here when missing (as root, or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "Installing Debian's chromium and chromium-driver (the search page's browser test)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# Google's Python style as TFX writes it (pyproject.toml): pyink formats,
# ruff lints. `make format` rewrites the tree in it and fixes what ruff can.
lint: $(VENV)/.installed
	@$(PY) -m pyink --check . || { echo "run make format"; exit 1; }
	@$(PY) -m ruff check --quiet .

format: $(VENV)/.installed
	$(PY) -m pyink --quiet .
	$(PY) -m ruff check --quiet --fix .

# The newest run under $(MAE_TFX_OUTPUT) or outputs/: its summary, and
# report.html beside it (every picture of notebooks/pipeline_walkthrough).
report: $(VENV)/.installed
	$(PY) -m pipeline.report --html

# Re-runs notebooks/ on the newest run and saves them with their outputs.
notebooks: $(VENV)/.installed
	$(PY) -m pipeline.notebooks

# The embedding server (TF Serving REST subset) on the pushed versions;
# INDEX=file.npz (from `python -m serving.embed`) enables :neighbors.
MODEL_DIR ?= $(or $(MAE_TFX_OUTPUT),outputs)/serving_model/mae-tfx
serve: PORT ?= 8501
serve: $(VENV)/.installed
	$(PY) -m serving.server --model-dir $(MODEL_DIR) --port $(PORT) $(if $(INDEX),--index $(INDEX))

# TensorBoard on loopback on the runs under $(MAE_TFX_OUTPUT) or outputs/:
# the Trainers' curves and the Embedding Projector of the newest push.
tensorboard: PORT ?= 6006
tensorboard: $(VENV)/.installed
	$(PY) -m pipeline.tensorboard_logs --port $(PORT) $(ARGS)

# Google Cloud (docs/vertex_ai.md): MAE_TFX_PROJECT, MAE_TFX_BUCKET and
# MAE_TFX_IMAGE (or the runner's flags) say where.
SPEC ?= mae-tfx-vertex.json
image:
	docker build -t $(MAE_TFX_IMAGE) .
vertex-compile: $(VENV)/.installed
	$(PY) -m pipeline.vertex_runner compile --output $(SPEC)
vertex-submit: $(VENV)/.installed
	$(PY) -m pipeline.vertex_runner submit --spec $(SPEC) $(if $(DRY_RUN),--dry-run)

# Re-pin after changing setup.py's requirements (then run `make test`).
lock: $(VENV)/.installed
	$(PY) -m pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf outputs
