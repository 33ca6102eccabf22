"""Using the pushed model: a server speaking TF Serving's REST and gRPC APIs,
and batch embedding, similarity search and near-duplicates from the command line."""

# TensorFlow's environment (Keras 2, the caching CPU allocator) is set in
# one place, models/__init__.py, before TensorFlow is first imported.
import models as _models  # noqa: F401
