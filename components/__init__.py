# TFX 1.16 and the models use Keras 2 (tf_keras). TensorFlow picks the Keras
# behind tf.keras when it is first imported, so say so before anything does.
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
