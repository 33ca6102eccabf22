"""The pipeline's own TFX components: the image ExampleGens, the Trainers'
run_fns, the resolver strategies, the AnomaliesGate, the search steps and the
VersionedPusher, each an adapter over the TFX-free code in `models`."""

# TensorFlow's environment (Keras 2, the caching CPU allocator) is set in
# one place, models/__init__.py, before TensorFlow is first imported.
import models as _models  # noqa: F401
