# The serving code loads SavedModels written by Keras 2 (tf_keras) models;
# say so before TensorFlow is first imported, as the other packages do.
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
