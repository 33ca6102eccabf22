"""The MAE, the linear probe and what they need (data, configuration,
search, serving signatures), with no TFX types: `components/` adapts them.

Importing the package sets TensorFlow's environment, which only counts
before TensorFlow is first imported: the other packages import it first.
"""

# TFX 1.16 and the models use Keras 2 (tf_keras). TensorFlow picks the Keras
# behind tf.keras when it is first imported, so say so before anything does.
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# A caching CPU allocator: the default one maps and unmaps each XLA
# program's temp buffer (~240 MB) on every call (1.4x img/s, RESULTS.md).
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# TensorFlow's C++ INFO lines (oneDNN, CPU features, XLA) are not the run's
# news; `-v` / MAE_TFX_VERBOSE=1 turns them on (models/run_log.py).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
