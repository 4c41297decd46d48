"""Running a converted network fast on a CPU: LiteRT (XNNPACK) or OpenVINO.

Both engines run the same float32 TFLite flatbuffer, the one cbir converts a
Keras network into (:func:`convert_to_tflite`) and caches in an index, and
neither imports TensorFlow, so a query on a CNN or autoencoder index starts
in a fraction of a second. Neither engine wins everywhere (docs/cnn.md has
the measurements behind the CNN's choice of engine per backbone).

Images go through in chunks of :data:`CHUNK`, whatever the caller's batch:
the activations of a few images stay in cache, and planning a new shape
costs less than with large batches (docs/cnn.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile

import numpy as np

from cbir.features._tensorflow import quiet

#: Images per invocation of the engine.
CHUNK = 4


@functools.cache
def openvino_available() -> bool:
    """Whether the ``openvino`` package is importable (it is an optional speed-up)."""
    return importlib.util.find_spec("openvino") is not None


def runs_without_tensorflow(engine: str) -> bool:
    """Whether a converted model runs on ``engine`` here without importing TensorFlow.

    LiteRT's interpreter falls back to TensorFlow's where ``ai_edge_litert``
    is not installed (:func:`tflite_interpreter_class`).
    """
    if engine == "openvino":
        return openvino_available()
    return engine == "tflite" and importlib.util.find_spec("ai_edge_litert") is not None


class ConvertedNetwork:
    """A TFLite flatbuffer ready to run: ``network(batch)`` -> feature maps.

    Parameters
    ----------
    model : bytes
        The flatbuffer, with a dynamic batch dimension and a uint8
        ``(n, input_size, input_size, 3)`` input.
    input_size : int
    threads : int
        CPU threads the engine may use.
    channels : int
        Channels of the input images (3 for RGB, 1 for greyscale).
    """

    #: Whether this engine has planned a shape in this process: engines
    #: announce themselves (on fd 2) the first time only.
    _announced = False

    def __init__(self, model: bytes, input_size: int, threads: int | None = None, channels: int = 3):
        self.input_size = int(input_size)
        self.threads = int(threads or cpu_count())
        self.channels = int(channels)
        self._planned = None
        self._load(model)

    def is_planned_for(self, batch_size: int) -> bool:
        """Whether batches of ``batch_size`` images run without planning first."""
        return self._planned == min(batch_size, CHUNK)

    def plan(self, batch_size: int) -> None:
        """Get ready for batches of ``batch_size`` images (a no-op when ready).

        The engine compiles for the chunk size, which only changes between
        indexing (chunks of 4) and single queries; engines log while they do.
        """
        if not self.is_planned_for(batch_size):
            if type(self)._announced:
                self._plan(min(batch_size, CHUNK))
            else:
                with quiet():
                    self._plan(min(batch_size, CHUNK))
                type(self)._announced = True
            self._planned = min(batch_size, CHUNK)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The last feature map ``(n, h, w, channels)`` float32 of a uint8 batch."""
        self.plan(len(batch))
        chunk = self._planned
        maps = []
        for start in range(0, len(batch), chunk):
            images = batch[start : start + chunk]
            if len(images) < chunk:
                # Padding the last few costs less than planning another shape.
                images = np.concatenate([images, np.zeros((chunk - len(images), *images.shape[1:]), images.dtype)])
            maps.append(self._run(np.ascontiguousarray(images))[: len(batch) - start])
        return np.concatenate(maps) if len(maps) > 1 else maps[0]

    def _shape(self, chunk: int) -> tuple[int, int, int, int]:
        return (chunk, self.input_size, self.input_size, self.channels)

    def _load(self, model: bytes) -> None:
        raise NotImplementedError

    def _plan(self, chunk: int) -> None:
        raise NotImplementedError

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LiteRTNetwork(ConvertedNetwork):
    """The TFLite interpreter with its default XNNPACK delegate."""

    def _load(self, model: bytes) -> None:
        self._interpreter = tflite_interpreter_class()(model_content=model, num_threads=self.threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]

    def _plan(self, chunk: int) -> None:
        # Not strict: the converted model has a fixed side, and a network
        # without a classifier runs at any other (multi-scale input); LiteRT
        # propagates the new shape through every layer at allocation.
        self._interpreter.resize_tensor_input(self._input, self._shape(chunk), strict=False)
        self._interpreter.allocate_tensors()

    def _run(self, images: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)


class OpenVINONetwork(ConvertedNetwork):
    """OpenVINO's CPU plugin, which reads TFLite flatbuffers directly."""

    def _load(self, model: bytes) -> None:
        import openvino

        self._core = openvino.Core()
        # OpenVINO reads TFLite from a file only; it keeps nothing from it once read.
        handle, path = tempfile.mkstemp(suffix=".tflite")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(model)
            self._model = self._core.read_model(path)
        finally:
            os.unlink(path)

    def _plan(self, chunk: int) -> None:
        self._model.reshape(list(self._shape(chunk)))
        compiled = self._core.compile_model(
            self._model,
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads},
        )
        self._request = compiled.create_infer_request()

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self._request.infer({0: images}, share_outputs=False)[0]


NETWORKS = {"tflite": LiteRTNetwork, "openvino": OpenVINONetwork}


class KerasNetwork:
    """A Keras model (the reference runtime), called like a converted network."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(batch))


def tflite_interpreter_class():
    """LiteRT's interpreter, or TensorFlow's own where LiteRT has no wheel.

    LiteRT (``ai_edge_litert``) is the runtime ``tf.lite.Interpreter`` is
    deprecated in favour of; it imports in milliseconds where TensorFlow takes
    seconds, which is most of a one-off query's time. Same kernels, same speed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from cbir.errors import MissingExtraError
        from cbir.extras import missing_extra
        from cbir.features._tensorflow import import_tensorflow

        try:
            return import_tensorflow().lite.Interpreter
        except MissingExtraError:
            raise missing_extra("LiteRT (ai-edge-litert)", "litert", "running a CNN or autoencoder model") from None
    return Interpreter


def convert_to_tflite(model) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer (no quantisation); imports TensorFlow."""
    from cbir.features._tensorflow import import_tensorflow

    tf = import_tensorflow()
    # The converter prints on stdout; its C++ side logs nothing once TensorFlow is imported.
    with quiet(native=False):
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


_thread_limit: int | None = None


def limit_threads(threads: int | None) -> None:
    """Let engines built from now on in this process use at most ``threads`` threads (``None``: no limit).

    For processes that share a machine's cores with others doing the same
    work (e.g. Ray actors, one CPU each).
    """
    global _thread_limit
    _thread_limit = None if threads is None else max(1, int(threads))


def cpu_count() -> int:
    """CPUs this process may run on (at most the :func:`limit_threads` limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return cpus if _thread_limit is None else min(cpus, _thread_limit)
