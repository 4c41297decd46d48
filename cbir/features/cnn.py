"""Pretrained CNN bottleneck features: a ``keras.applications`` backbone, pooled.

An image is resized to ``input_size`` x ``input_size`` (squashed, centre-cropped
or padded), scaled by the backbone's own ``preprocess_input``, run through the
backbone without its classifier, and its last feature map is pooled (average,
max or generalised mean) into one L2-normalised vector.

The runtimes give the same vectors (cosine >= 0.9999998 here):

* ``tflite``: the Keras model converted once with ``tf.lite.TFLiteConverter``
  (float32, no quantisation) and run by the LiteRT interpreter
  (``ai_edge_litert``, TensorFlow Lite's successor; TensorFlow's own
  ``tf.lite.Interpreter`` where no LiteRT wheel exists) with XNNPACK;
* ``openvino``: the same converted model run by OpenVINO's CPU plugin;
* ``auto`` (default): whichever of the two is faster for the backbone
  (:data:`FASTEST_RUNTIME`; OpenVINO for ResNet50, LiteRT otherwise);
* ``keras``: ``model.predict``, the reference.

On 2 AVX2 cores the default runs MobileNet at 3.4x ``model.predict`` and
ResNet50 at 1.7x (less where TensorFlow turns oneDNN on, as on AVX-512 CPUs);
see docs/cnn.md and :mod:`cbir.features.runtimes`. The converted model is
cached in the index directory, so a query loads it in a fraction of a second,
never reconverts and never imports TensorFlow.

``preprocess_input`` runs inside the network (uint8 in), pooling in NumPy
outside it, so every runtime shares both and one converted model serves every
pooling.

What the embedding depends on is recorded by :meth:`CNNExtractor.save` in
``cnn.json``: backbone, input size, weights source and the SHA-256 of the
weights (of the weights file, or of the seeded random weights for
``weights="none"``). :meth:`CNNExtractor.load_state` refuses a model that
differs, so a query is never embedded by another model than its collection.

TensorFlow is imported only when a Keras model is built (to index, or with
the ``keras`` runtime), through :mod:`cbir.features._tensorflow`, never when
this module is imported nor to query a TFLite index.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from cbir.errors import IndexCorruptError, UsageError, WeightsError
from cbir.features._tensorflow import captured_stderr, import_keras, import_tensorflow
from cbir.fileio import file_sha256, write_bytes_atomic
from cbir.features.base import Extractor, l2_normalize
from cbir.features.runtimes import NETWORKS, openvino_available


@dataclass(frozen=True)
class Backbone:
    """What cbir needs to know about one ``keras.applications`` network.

    Attributes
    ----------
    constructor : str
        Name of the model function in ``keras.applications``.
    module : str
        Submodule of ``keras.applications`` whose ``preprocess_input`` the
        network was trained with.
    dim : int
        Channels of the last feature map, i.e. the length of a pooled vector.
    cache_file : str
        Name of the no-top ImageNet weights in Keras' cache
        (``$KERAS_HOME/models/``); ``{size}`` stands for the training
        resolution nearest the input size, see ``imagenet_sizes``.
    origin : str
        Where Keras downloads that file from (``{file}`` is the file name).
    file_hash : str or None
        The hash Keras checks the downloaded file against (MD5), if any.
    imagenet_sizes : tuple of int
        Input sizes Keras has separate ImageNet weights for; other sizes use
        the 224 px weights, as Keras does.
    """

    constructor: str
    module: str
    dim: int
    cache_file: str
    origin: str
    file_hash: str | None = None
    imagenet_sizes: tuple[int, ...] = (224,)

    def cache_name(self, input_size: int) -> str:
        size = input_size if input_size in self.imagenet_sizes else 224
        return self.cache_file.format(size=size)


#: The backbones ``--backbone`` accepts; names, URLs and hashes follow Keras'
#: own ``keras.applications`` code so the files are shared with its cache.
BACKBONES: dict[str, Backbone] = {
    "mobilenet": Backbone(
        constructor="MobileNet",
        module="mobilenet",
        dim=1024,
        cache_file="mobilenet_1_0_{size}_tf_no_top.h5",
        origin="https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/{file}",
        imagenet_sizes=(128, 160, 192, 224),
    ),
    "mobilenetv2": Backbone(
        constructor="MobileNetV2",
        module="mobilenet_v2",
        dim=1280,
        cache_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
        origin="https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{file}",
        imagenet_sizes=(96, 128, 160, 192, 224),
    ),
    "efficientnetb0": Backbone(
        constructor="EfficientNetB0",
        module="efficientnet",
        dim=1280,
        cache_file="efficientnetb0_notop.h5",
        origin="https://storage.googleapis.com/keras-applications/{file}",
        file_hash="50bc09e76180e00e4465e1a485ddc09d",
    ),
    "resnet50": Backbone(
        constructor="ResNet50",
        module="resnet50",
        dim=2048,
        cache_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        origin="https://storage.googleapis.com/tensorflow/keras-applications/resnet/{file}",
        file_hash="4d473c1dd8becc155b73f8504c6f6626",
    ),
    "vgg16": Backbone(
        constructor="VGG16",
        module="vgg16",
        dim=512,
        cache_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        origin="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{file}",
        file_hash="6d6bbae143d832006294945121d1f1fc",
    ),
}

POOLINGS = ("avg", "max", "gem")
RESIZE_MODES = ("squash", "crop", "pad")
RUNTIMES = ("auto", "tflite", "openvino", "keras")
#: What ``runtime="auto"`` runs each backbone with: the faster of LiteRT and
#: OpenVINO on 2 AVX2 cores (see :mod:`cbir.features.runtimes`).
FASTEST_RUNTIME = {
    "mobilenet": "tflite",
    "mobilenetv2": "tflite",
    "efficientnetb0": "tflite",
    "resnet50": "openvino",
    "vgg16": "tflite",
}
#: Smallest input ``keras.applications`` accepts for these networks.
MIN_INPUT_SIZE = 32
#: Padding colour: the ImageNet mean, which every ``preprocess_input`` maps to
#: (nearly) zero, so the border carries no signal.
PAD_RGB = (124, 116, 104)

_STATE_FILE = "cnn.json"
_TFLITE_FILE = "model.tflite"
_STATE_VERSION = 1
# GeM is defined on positive activations; EfficientNet's last one (swish) can
# be slightly negative, so activations are clamped to this floor first.
_GEM_EPS = 1e-6


class CNNExtractor(Extractor):
    """Pooled last feature map of a pretrained convolutional network.

    Parameters
    ----------
    backbone : {"mobilenet", "mobilenetv2", "efficientnetb0", "resnet50", "vgg16"}
        Network from ``keras.applications``, without its classifier.
        MobileNet is the default: on Corel-1k it reaches P@10 0.956 with the
        shared ImageNet weights at about 140 images/s (LiteRT, 2 AVX2 cores).
    weights : str
        ``"imagenet"``: Keras' pretrained weights from its cache
        (``$KERAS_HOME/models/``, downloaded there by Keras if missing);
        ``"none"``: random initialisation from ``seed`` (tests, throughput);
        otherwise the path of a ``.h5`` or ``.weights.h5`` file for the same
        architecture.
    pooling : {"avg", "max", "gem"}
        Global pooling of the last feature map. ``avg`` is the default: on
        Corel-1k it beats GeM (p=2..4) and max (mAP 0.852 vs 0.823 / 0.669).
    gem_p : float
        Exponent of generalised-mean pooling (1 is average, large is max).
    input_size : int
        Side of the square network input, at least 32.
    resize : {"squash", "crop", "pad"}
        How an image becomes square: ``squash`` scales both sides to
        ``input_size`` (aspect ratio lost, nothing cut off); ``crop`` scales
        the shorter side and keeps the centre; ``pad`` scales the longer side
        and pads with the ImageNet mean colour. ``squash`` is the default: on
        Corel-1k it ties with ``crop`` (P@10 0.956 vs 0.955, mAP 0.852 vs
        0.853) and beats ``pad`` (0.943 / 0.827) while keeping the whole picture.
    runtime : {"auto", "tflite", "openvino", "keras"}
        ``tflite``: LiteRT with XNNPACK; ``openvino``: OpenVINO; both run the
        converted model cached in the index. ``auto``: the faster of the two
        for the backbone (LiteRT where OpenVINO is not installed). ``keras``:
        ``model.predict``, the reference. Same vectors.
    batch_size : int
        Images per forward pass; bounds memory whatever the number of images.
    seed : int
        Seed of the random initialisation when ``weights="none"``.

    Attributes
    ----------
    weights_sha256_ : str
        SHA-256 of the weights the model was built from.
    model_ : keras.Model
        The backbone, when built with the Keras runtime (or to convert it).
    tflite_model_ : bytes
        The converted model, with every runtime but Keras (what :meth:`save` caches).
    network_ : cbir.features.runtimes.ConvertedNetwork
        Runs ``tflite_model_`` with LiteRT or OpenVINO on every available core.
    """

    name = "cnn"
    runtime_params = ("runtime", "batch_size")

    def __init__(
        self,
        backbone: str = "mobilenet",
        weights: str = "imagenet",
        pooling: str = "avg",
        gem_p: float = 3.0,
        input_size: int = 224,
        resize: str = "squash",
        runtime: str = "auto",
        batch_size: int = 32,
        seed: int = 0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.pooling = pooling
        self.gem_p = gem_p
        self.input_size = input_size
        self.resize = resize
        self.runtime = runtime
        self.batch_size = batch_size
        self.seed = seed

    # -- configuration -----------------------------------------------------
    @classmethod
    def normalize_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        weights = params.get("weights")
        if isinstance(weights, (str, os.PathLike)) and str(weights) not in ("imagenet", "none"):
            params = {**params, "weights": str(Path(weights).expanduser().absolute())}
        return params

    def check_params(self) -> None:
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("resize", self.resize, RESIZE_MODES)
        _check_choice("runtime", self.runtime, RUNTIMES)
        if self.runtime == "openvino" and not openvino_available():
            raise UsageError("the openvino runtime needs the openvino package (pip install openvino); or use --runtime tflite")
        if not isinstance(self.weights, str) or not self.weights:
            raise UsageError(f"weights must be 'imagenet', 'none' or a file path, got {self.weights!r}")
        if self.weights not in ("imagenet", "none") and not self.weights.endswith((".h5", ".hdf5")):
            raise UsageError(
                f"weights file {self.weights!r} must be a Keras .h5 or .weights.h5 file "
                "(or use 'imagenet' or 'none')"
            )
        if not _is_int(self.input_size) or self.input_size < MIN_INPUT_SIZE:
            raise UsageError(f"input size must be an integer of at least {MIN_INPUT_SIZE}, got {self.input_size!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if not _is_int(self.seed):
            raise UsageError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.gem_p, bool) or not isinstance(self.gem_p, (int, float)) or not self.gem_p > 0:
            raise UsageError(f"GeM exponent must be a positive number, got {self.gem_p!r}")

    @property
    def decode_min_side(self) -> int:
        return int(self.input_size)

    @property
    def dim(self) -> int:
        return BACKBONES[self.backbone].dim

    @property
    def is_loaded(self) -> bool:
        """Whether the network is built (it is built on first use otherwise)."""
        return hasattr(self, "network_") or hasattr(self, "model_")

    @property
    def engine(self) -> str:
        """The runtime that actually runs: ``auto`` resolved for this backbone."""
        if self.runtime != "auto":
            return self.runtime
        fastest = FASTEST_RUNTIME[self.backbone]
        return fastest if fastest != "openvino" or openvino_available() else "tflite"

    # -- loading -----------------------------------------------------------
    def fit(self, images: Sequence[np.ndarray] = (), **fit_params: Any) -> "CNNExtractor":
        """Build the network now (nothing is learned from ``images``).

        Otherwise it is built at the first :meth:`transform_prepared`: loading
        the weights and, for TFLite, converting takes 1-15 s, which callers
        may prefer to spend before a progress bar starts. Returns ``self``.
        """
        self._ensure_loaded()
        return self

    # -- embedding ---------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 image to ``(input_size, input_size, 3)`` uint8."""
        return resize_image(image, int(self.input_size), self.resize)

    def transform_prepared(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Embed prepared images: ``(n, dim)`` float32, L2-normalised rows."""
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._ensure_loaded()
        pooled = []
        for start in range(0, len(items), self.batch_size):
            # uint8 in: preprocess_input runs inside the network (see _with_preprocessing).
            batch = np.stack(items[start : start + self.batch_size])
            pooled.append(self._pool(self._forward(batch)))
        return l2_normalize(np.concatenate(pooled))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Last feature map ``(n, h, w, channels)`` of a uint8 RGB batch."""
        if not hasattr(self, "network_"):  # the Keras runtime
            return self.model_.predict(batch, batch_size=len(batch), verbose=0)
        if not self.network_.is_planned_for(len(batch)):
            with _silenced():  # only planning logs; a forward pass must not hide the progress bar
                self.network_.plan(len(batch))
        return self.network_(batch)

    def _pool(self, feature_map: np.ndarray) -> np.ndarray:
        if self.pooling == "avg":
            return feature_map.mean(axis=(1, 2))
        if self.pooling == "max":
            return feature_map.max(axis=(1, 2))
        # Generalised mean, computed relative to each channel's peak so that
        # x ** p cannot overflow float32 for large p.
        p = float(self.gem_p)
        positive = np.maximum(feature_map, _GEM_EPS)
        peak = positive.max(axis=(1, 2), keepdims=True)
        return peak[:, 0, 0, :] * np.power(np.power(positive / peak, p).mean(axis=(1, 2)), 1.0 / p)

    # -- building the network ----------------------------------------------
    def _ensure_loaded(self) -> None:
        if self.is_loaded:
            return
        self.check_params()
        model = self._build_keras_model()
        if self.engine == "keras":
            self.model_ = model
        else:
            self._set_converted_model(convert_to_tflite(model))

    def _build_keras_model(self):
        """The backbone with the requested weights; sets ``weights_sha256_``."""
        keras = import_keras()
        constructor = getattr(keras.applications, BACKBONES[self.backbone].constructor)
        shape = (int(self.input_size), int(self.input_size), 3)
        if self.weights == "none":
            model = constructor(include_top=False, weights=None, input_shape=shape)
            _randomize(model, int(self.seed))
            self.weights_sha256_ = _weights_digest(model)
            return _with_preprocessing(keras, model, self.backbone)
        path = self._weights_file()
        model = constructor(include_top=False, weights=None, input_shape=shape)
        try:
            # A mismatched file warns once per layer before failing; the
            # failure alone is the message.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load_weights(path)
        except (OSError, ValueError, KeyError) as exc:
            # Keras' first line goes on with "Example error message for ...:".
            reason = _first_line(exc).split(". ")[0].rstrip(":. ")
            raise WeightsError(
                f"cannot load {path} into {self.backbone} (include_top=False): {reason} "
                f"(weights of another network, or a damaged file?)"
            ) from exc
        self.weights_sha256_ = file_sha256(path)
        return _with_preprocessing(keras, model, self.backbone)

    def _weights_file(self) -> Path:
        """The weights file, fetched into Keras' cache first for ``imagenet``."""
        if self.weights == "imagenet":
            return fetch_imagenet_weights(self.backbone, int(self.input_size))
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path

    def _set_converted_model(self, model_bytes: bytes) -> None:
        with _silenced():
            self.network_ = NETWORKS[self.engine](model_bytes, int(self.input_size), _cpu_count())
        self.tflite_model_ = model_bytes

    # -- persistence -------------------------------------------------------
    def weights_files(self) -> list[Path]:
        """The weights file (``imagenet`` or a path); none for random weights."""
        if self.weights == "none":
            return []
        return [self._weights_file()]

    def save(self, directory: Path) -> None:
        """Write ``cnn.json`` (what the vectors depend on) and, unless the
        runtime is Keras, the converted ``model.tflite``."""
        self._ensure_loaded()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "version": _STATE_VERSION,
            "backbone": self.backbone,
            "input_size": int(self.input_size),
            "weights": self.weights,
            "weights_sha256": self.weights_sha256_,
        }
        if self.engine != "keras":
            write_bytes_atomic(directory / _TFLITE_FILE, self.tflite_model_)
            record["tflite_sha256"] = hashlib.sha256(self.tflite_model_).hexdigest()
        write_bytes_atomic(directory / _STATE_FILE, (json.dumps(record, indent=2) + "\n").encode())

    def load_state(self, directory: Path) -> "CNNExtractor":
        """Load the model :meth:`save` recorded, refusing any other.

        With LiteRT or OpenVINO the cached ``model.tflite`` is loaded as is
        (no Keras model, no conversion, the weights file is not needed).
        Otherwise the network is rebuilt and its weights must have the
        recorded SHA-256.

        Raises
        ------
        IndexCorruptError
            ``cnn.json`` or ``model.tflite`` is missing, unreadable, or
            disagrees with this extractor's parameters.
        WeightsError
            The weights changed since the index was built.
        """
        self.check_params()
        directory = Path(directory)
        record = self._read_record(directory / _STATE_FILE)
        tflite_path = directory / _TFLITE_FILE
        if self.engine != "keras" and "tflite_sha256" in record:
            try:
                model_bytes = tflite_path.read_bytes()
            except OSError as exc:
                raise IndexCorruptError(f"cannot read the cached model {tflite_path}: {exc}") from exc
            if hashlib.sha256(model_bytes).hexdigest() != record["tflite_sha256"]:
                raise IndexCorruptError(f"cached model {tflite_path} does not match its SHA-256 in {_STATE_FILE}")
            self.weights_sha256_ = record["weights_sha256"]
            self._set_converted_model(model_bytes)
            return self
        # Built with the Keras runtime: rebuild, and check it is the same network.
        model = self._build_keras_model()
        if self.weights_sha256_ != record["weights_sha256"]:
            source = "the random initialisation" if self.weights == "none" else f"weights file {self._weights_file()}"
            raise WeightsError(
                f"{source} differs from the one this index was built with "
                f"(SHA-256 {self.weights_sha256_[:12]}... vs {record['weights_sha256'][:12]}...); rebuild the index"
            )
        if self.engine == "keras":
            self.model_ = model
        else:
            self._set_converted_model(convert_to_tflite(model))
        return self

    def _read_record(self, path: Path) -> dict[str, Any]:
        expected = {"backbone": self.backbone, "input_size": int(self.input_size), "weights": self.weights}
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read CNN state {path}: {exc}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("weights_sha256"), str):
            raise IndexCorruptError(f"CNN state {path} does not record the SHA-256 of its weights")
        found = {key: record.get(key) for key in expected}
        if found != expected:
            raise IndexCorruptError(f"CNN state {path} records {found}, the manifest says {expected}")
        return record


# -- helpers shared with tests and benchmarks -----------------------------
def resize_image(image: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """Make an RGB uint8 image ``(size, size, 3)``: squash, centre-crop or pad.

    Parameters
    ----------
    image : ndarray of shape (height, width, 3), uint8
    size : int
    mode : {"squash", "crop", "pad"}
        See :class:`CNNExtractor`.

    Returns
    -------
    ndarray of shape (size, size, 3), uint8, C-contiguous
    """
    height, width = image.shape[:2]
    if mode == "squash":
        return _scale(image, size, size)
    if mode == "crop":
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        scaled = _scale(image, new_w, new_h)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return np.ascontiguousarray(scaled[top : top + size, left : left + size])
    if mode == "pad":
        scale = size / max(height, width)
        new_h, new_w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
        out = np.empty((size, size, 3), dtype=np.uint8)
        out[:] = PAD_RGB
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out[top : top + new_h, left : left + new_w] = _scale(image, new_w, new_h)
        return out
    raise UsageError(f"unknown resize mode {mode!r}; choose one of: {', '.join(RESIZE_MODES)}")


def _scale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == (width, height):
        return np.ascontiguousarray(image)
    # Area averaging avoids aliasing when shrinking by 2x or more. Below
    # that (the usual case: big JPEGs are decoded at a reduced scale first)
    # bilinear is as good (Corel-1k P@10 0.956 vs 0.956) at a quarter of
    # the cost, 0.12 vs 0.52 ms an image: CPU the network can use instead.
    shrink = min(image.shape[1] / width, image.shape[0] / height)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)


def fetch_imagenet_weights(backbone: str, input_size: int = 224) -> Path:
    """Path of the backbone's no-top ImageNet weights in Keras' cache.

    ``keras.utils.get_file`` finds the file under ``$KERAS_HOME/models/``
    (``~/.keras/models/`` by default), or downloads it there.

    Raises
    ------
    WeightsError
        The file is neither cached nor downloadable; the message names the
        expected path and the ``--weights FILE`` alternative.
    """
    keras = import_keras()
    spec = BACKBONES[backbone]
    name = spec.cache_name(input_size)
    # KERAS_HOME is read now rather than when Keras was imported, so a
    # process (or a test) that sets it later still gets the cache it names.
    cache_dir = os.environ.get("KERAS_HOME")
    try:
        # get_file reports the download on stdout, which is for results.
        with contextlib.redirect_stdout(sys.stderr):
            path = keras.utils.get_file(
                name,
                spec.origin.format(file=name),
                cache_subdir="models",
                file_hash=spec.file_hash,
                cache_dir=cache_dir,
            )
    except Exception as exc:  # get_file raises bare Exception on fetch failures
        where = Path(cache_dir or Path.home() / ".keras") / "models" / name
        raise WeightsError(
            f"cannot download the ImageNet weights of {backbone} ({_first_line(exc)}); "
            f"place the file at {where} or pass --weights FILE"
        ) from exc
    return Path(path)


def convert_to_tflite(model) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer (no quantisation)."""
    tf = import_tensorflow()
    with _silenced():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _weights_digest(model) -> str:
    """SHA-256 over a model's weight arrays, in order."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _with_preprocessing(keras, backbone_model, backbone: str):
    """The backbone behind a uint8 RGB input and its own ``preprocess_input``.

    Inside the graph, preprocessing runs in TensorFlow's and TFLite's kernels
    rather than in NumPy on the main thread (about 12% of MobileNet's batch
    time), and both runtimes share it. The network's weights are untouched.
    """
    preprocess = getattr(keras.applications, BACKBONES[backbone].module).preprocess_input
    inputs = keras.Input(shape=backbone_model.input_shape[1:], dtype="uint8", name="rgb")
    outputs = backbone_model(preprocess(keras.ops.cast(inputs, "float32")))
    return keras.Model(inputs, outputs, name=f"{backbone}_preprocessed")


def _randomize(model, seed: int) -> None:
    """He-normal kernels drawn from ``seed``, in layer order.

    Keras' default (Glorot) initialisation makes activations vanish through a
    deep ReLU network: a random MobileNet's features are around 1e-15, below
    what can be normalised. He initialisation keeps their scale, and NumPy's
    generator makes the network depend on ``seed`` alone, without touching
    any global random state.
    """
    keras = import_keras()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # (height, width, channels, multiplier): each filter sees one channel.
            fan_in = int(np.prod(layer.kernel.shape[:2]))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
        else:
            continue
        kernel = layer.kernel
        std = np.sqrt(2.0 / fan_in)
        kernel.assign((rng.standard_normal(kernel.shape) * std).astype(np.float32))


@contextlib.contextmanager
def _silenced():
    """Keep TensorFlow's chatter (C++ logs, converter prints, the TFLite
    deprecation warning) off the terminal; replay it if the block fails."""
    captured = captured_stderr()
    try:
        with captured, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(captured.read())
        raise


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_choice(what: str, value: Any, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
