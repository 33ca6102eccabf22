"""Benchmarks of the pipeline, the models and serving, each run as
`python -m benchmarks.<name>`; RESULTS.md keeps their figures."""

# TensorFlow's environment (Keras 2, the caching CPU allocator) is set in
# one place, models/__init__.py, before TensorFlow is first imported.
import models as _models  # noqa: F401
