# The serving code loads SavedModels written by Keras 2 (tf_keras) models;
# say so before TensorFlow is first imported, as the other packages do.
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# A caching CPU allocator: the default one maps and unmaps each XLA
# program's temp buffer (~240 MB) on every call (1.4x img/s, RESULTS.md).
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
