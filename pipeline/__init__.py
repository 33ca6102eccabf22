"""The TFX pipeline: its definition and configuration, the local and Vertex AI
runners, and what a run did (MLMD's record, the report, figures and notebooks)."""

# TensorFlow's environment (Keras 2, the caching CPU allocator) is set in
# one place, models/__init__.py, before TensorFlow is first imported.
import models as _models  # noqa: F401
