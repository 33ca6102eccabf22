# The image every Vertex AI Pipelines step, Vertex AI Training job and
# Dataflow worker of mae-tfx runs: TFX 1.16 plus this project, installed with
# the tested pins (requirements.lock).
#   docker build -t REGION-docker.pkg.dev/PROJECT/mae-tfx/mae-tfx:TAG .
FROM tensorflow/tfx:1.16.0

WORKDIR /mae-tfx
COPY requirements.lock setup.py pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY components/ components/
COPY models/ models/
COPY serving/ serving/
COPY schemas/ schemas/
RUN python -m pip install --no-cache-dir "pip==24.3.1" \
 && python -m pip install --no-cache-dir -c requirements.lock -e . \
 && python -c "import pipeline.pipeline, components.mae_trainer, components.probe_trainer"

# TFX 1.16 and our models are Keras 2 (tf_keras); the Trainer's run_fns are
# imported by module path, so the project must be importable everywhere. The
# BFC CPU allocator keeps XLA's temp buffers instead of re-mapping them per step.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPU_ALLOCATOR_USE_BFC=true \
    PYTHONPATH=/mae-tfx
