"""Running a converted network fast on a CPU: LiteRT (XNNPACK) or OpenVINO.

Both engines run the same float32 TFLite flatbuffer, the one cbir converts a
Keras network into (:func:`convert_to_tflite`) and caches in an index, and
neither imports TensorFlow, so a query on a CNN or autoencoder index starts
in a fraction of a second. Neither engine wins everywhere (docs/cnn.md has
the measurements behind the CNN's choice of engine per backbone).

Images go through in chunks of :data:`CHUNK`, whatever the caller's batch:
the activations of a few images stay in cache, and there are only a few
shapes to plan (:class:`ConvertedNetwork`, docs/cnn.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile

import numpy as np

from cbir.cpus import usable_cores
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

    Batches go through in chunks of :data:`CHUNK` images; a remainder (or a
    small batch, as the server's batcher makes all the time) runs at the
    smallest of :attr:`sizes` that holds it, padded. How an engine plans a
    shape decides the rest (docs/cnn.md has the measurements): LiteRT
    reshapes its XNNPACK runtime in well under a millisecond, so it runs
    every size exactly; OpenVINO compiles a model per shape (50 ms for
    MobileNet, 0.1-0.2 s for ResNet50), so it keeps one compiled model per
    size and pads to fewer sizes.

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

    #: Chunk sizes this engine runs, smallest first, the last one :data:`CHUNK`.
    sizes: tuple[int, ...] = (1, 2, 3, CHUNK)
    #: Whether a planned size stays planned when another one is planned.
    keeps_plans = False
    #: Whether this engine has planned a shape in this process: engines
    #: announce themselves (on fd 2) the first time only.
    _announced = False

    def __init__(self, model: bytes, input_size: int, threads: int | None = None, channels: int = 3):
        self.input_size = int(input_size)
        self.threads = int(threads or cpu_count())
        self.channels = int(channels)
        self._plans: dict[int, object] = {}  # chunk size -> what the engine planned for it
        self._load(model)

    def chunk_size(self, batch_size: int) -> int:
        """The chunk size the first images of a batch of ``batch_size`` run at."""
        wanted = min(max(1, batch_size), CHUNK)
        return next(size for size in self.sizes if size >= wanted)

    def is_planned_for(self, batch_size: int) -> bool:
        """Whether batches of ``batch_size`` images run without planning first."""
        return self.chunk_size(batch_size) in self._plans

    def plan(self, batch_size: int) -> int:
        """Get ready for batches of ``batch_size`` images (a no-op when ready); the chunk size they run at.

        Engines log while they plan their first shape in a process.
        """
        chunk = self.chunk_size(batch_size)
        if chunk not in self._plans:
            if not self.keeps_plans:
                self._plans.clear()
            if type(self)._announced:
                self._plans[chunk] = self._plan(chunk)
            else:
                with quiet():
                    self._plans[chunk] = self._plan(chunk)
                type(self)._announced = True
        return chunk

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The last feature map ``(n, h, w, channels)`` float32 of a uint8 batch."""
        maps = []
        start = 0
        while start < len(batch) or not maps:
            chunk = self.plan(len(batch) - start)
            images = batch[start : start + chunk]
            count = len(images)
            if count < chunk:
                images = np.concatenate([images, np.zeros((chunk - count, *images.shape[1:]), images.dtype)])
            maps.append(self._run(self._plans[chunk], np.ascontiguousarray(images))[:count])
            start += chunk
        return np.concatenate(maps) if len(maps) > 1 else maps[0]

    def _shape(self, chunk: int) -> tuple[int, int, int, int]:
        return (chunk, self.input_size, self.input_size, self.channels)

    def _load(self, model: bytes) -> None:
        raise NotImplementedError

    def _plan(self, chunk: int) -> object:
        raise NotImplementedError

    def _run(self, planned: object, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LiteRTNetwork(ConvertedNetwork):
    """The TFLite interpreter with its default XNNPACK delegate (one interpreter, resized)."""

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

    def _run(self, planned: None, images: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)


class OpenVINONetwork(ConvertedNetwork):
    """OpenVINO's CPU plugin, which reads TFLite flatbuffers directly; one compiled model per chunk size.

    A batch of 3 is padded to 4: one compiled model fewer to keep (memory)
    for a quarter of a chunk's compute.
    """

    sizes = (1, 2, CHUNK)
    keeps_plans = True

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

    def _plan(self, chunk: int):
        self._model.reshape(list(self._shape(chunk)))
        compiled = self._core.compile_model(
            self._model,
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads},
        )
        return compiled.create_infer_request()

    def _run(self, planned, images: np.ndarray) -> np.ndarray:
        return planned.infer({0: images}, share_outputs=False)[0]


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
    """CPUs this process may use (:func:`cbir.cpus.usable_cores`), at most the :func:`limit_threads` limit."""
    cpus = usable_cores()
    return cpus if _thread_limit is None else min(cpus, _thread_limit)
