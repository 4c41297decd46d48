"""Import TensorFlow/Keras quietly, and only when an extractor needs them.

TensorFlow prints oneDNN, CUDA and absl notices on import; they are noise in a
terminal tool, so they are silenced before the first import. Import time is
4-7 s here, which is why nothing outside the deep extractors calls this.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Return the ``tensorflow`` module, imported with its log noise turned off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN stays on (TensorFlow's default): turning it off to hide its
    # notice halved Keras' speed here (MobileNet 94 -> 48 images/s).
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" not in sys.modules:
        with captured_stderr() as captured:
            try:
                from cbir.extras import import_optional

                import_optional("tensorflow", "TensorFlow", "cnn", "building a CNN or autoencoder model")
            except Exception:
                sys.stderr.write(captured.read())
                raise
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def import_keras() -> ModuleType:
    """Return ``keras`` (Keras 3 on the TensorFlow backend), imported quietly."""
    import_tensorflow()
    import keras

    return keras


class captured_stderr:
    """Send file descriptor 2 to a temporary file for the duration of a block.

    TensorFlow's C++ runtime logs through absl before any Python setting can
    reach it, so the only way to keep those lines off the terminal is at the
    file-descriptor level. What was captured stays readable for error reports.
    """

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+")
        self._saved_fd = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def read(self) -> str:
        self._file.seek(0)
        return self._file.read()

    def __exit__(self, *exc_info):
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        return False
