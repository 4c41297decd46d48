"""Import TensorFlow/Keras only when needed; keep engine chatter off the terminal where the application asks.

TensorFlow's C++ runtime logs through absl before any Python setting can
reach it (oneDNN and CUDA notices on import), and LiteRT announces its
XNNPACK delegate once per process. Those lines can only be kept off the
terminal at the file-descriptor level, which affects every thread of the
process, so the library does it only where the application asked, with
:data:`QUIET_ENGINES_ENV` (the ``cbir`` command does; worker processes
inherit it): then :func:`captured_stderr` is used only around the calls
that print, and only the first time (the TensorFlow import, an engine's
first plan), never around a forward pass. Log levels and TensorFlow's
environment are the application's too (:func:`cbir.cli.main`).
Import time is 4-7 s, which is why nothing outside the deep extractors
calls :func:`import_tensorflow`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
import warnings
from types import ModuleType
from typing import Iterator

# One redirection at a time: two threads that each saved and restored fd 2
# around the other's redirection would leave it pointing at a closed file.
_fd_lock = threading.RLock()


#: Set to 1 by an application that wants engines' native logs kept off fd 2 (the ``cbir`` command).
QUIET_ENGINES_ENV = "CBIR_QUIET_ENGINES"


def quiet_engines() -> bool:
    """Whether this process's application asked for engines' native logs to be captured."""
    return os.environ.get(QUIET_ENGINES_ENV) == "1"


def import_tensorflow() -> ModuleType:
    """Return the ``tensorflow`` module (its import's notices captured where :func:`quiet_engines`)."""
    if "tensorflow" not in sys.modules:
        with captured_stderr() if quiet_engines() else contextlib.nullcontext() as captured:
            try:
                from cbir.extras import import_optional

                import_optional("tensorflow", "TensorFlow", "cnn", "building a CNN or autoencoder model")
            except Exception:
                if captured is not None:
                    sys.stderr.write(captured.read())
                raise
    import tensorflow as tf

    return tf


def import_keras() -> ModuleType:
    """Return ``keras`` (Keras 3 on the TensorFlow backend), imported quietly."""
    import_tensorflow()
    import keras

    return keras


class captured_stderr:
    """Send file descriptor 2 to a temporary file for the duration of a block.

    Every thread's stderr goes to the file meanwhile, so keep the block to
    the native call that prints. Blocks in several threads run one after the
    other. What was captured stays readable for error reports.
    """

    def __enter__(self):
        _fd_lock.acquire()
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile(mode="w+")
            self._saved_fd = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except BaseException:
            _fd_lock.release()
            raise
        return self

    def read(self) -> str:
        self._file.seek(0)
        return self._file.read()

    def __exit__(self, *exc_info):
        try:
            sys.stderr.flush()
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)
        finally:
            _fd_lock.release()
        return False


@contextlib.contextmanager
def quiet(native: bool = True) -> Iterator[None]:
    """Keep TensorFlow's chatter off the terminal during a block; replay it if the block fails.

    Python-level output (the converter's prints, the TFLite deprecation
    warning) is always dropped; with ``native`` the C++ logs too, through
    :class:`captured_stderr`, where the application asked (:func:`quiet_engines`).
    """
    captured = captured_stderr() if native and quiet_engines() else None
    try:
        with contextlib.ExitStack() as stack:
            if captured is not None:
                stack.enter_context(captured)
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        if captured is not None:
            sys.stderr.write(captured.read())
        raise
