# Run as `python -m benchmarks.<name>`. TensorFlow's environment (Keras 2,
# the caching CPU allocator) is set in one place, models/__init__.py, before
# TensorFlow is first imported.
import models as _models  # noqa: F401
