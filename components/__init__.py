# TFX 1.16 and the models use Keras 2 (tf_keras). TensorFlow picks the Keras
# behind tf.keras when it is first imported, so say so before anything does.
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# A caching CPU allocator: the default one maps and unmaps each XLA
# program's temp buffer (~240 MB) on every call (1.4x img/s, RESULTS.md).
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
