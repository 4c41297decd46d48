"""Pretrained CNN bottleneck features: a ``keras.applications`` backbone, pooled.

An image is resized to ``input_size`` x ``input_size`` (squashed, centre-cropped
or padded), scaled by the backbone's own ``preprocess_input``, run through the
backbone without its classifier, and its last feature map is pooled (average,
max, generalised mean or R-MAC regions: :mod:`cbir.features.pooling`) into
one L2-normalised vector. With several ``scales`` the image runs at each side
``input_size * scale`` and the normalised vectors are averaged (multi-scale).

A network without its classifier runs at any input side, so one converted
model serves every scale: each side gets its own engine instance, planned for
that shape (LiteRT resizes the input tensor, OpenVINO reshapes the model).

The runtimes give the same vectors (cosine >= 0.9999998 here):

* ``tflite``: the Keras model converted once with ``tf.lite.TFLiteConverter``
  (float32, no quantisation) and run by the LiteRT interpreter
  (``ai_edge_litert``, TensorFlow Lite's successor; TensorFlow's own
  ``tf.lite.Interpreter`` where no LiteRT wheel exists) with XNNPACK;
* ``openvino``: the same converted model run by OpenVINO's CPU plugin;
* ``auto`` (default): whichever of the two is faster for the backbone
  (:data:`FASTEST_RUNTIME`; OpenVINO for ResNet50, LiteRT otherwise);
* ``keras``: ``model.predict``, the reference.

Speeds of each runtime per backbone are in docs/cnn.md. The converted model
is cached in the index directory, so a query loads it in a fraction of a
second, never reconverts and never imports TensorFlow.

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

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir.errors import IndexCorruptError, UsageError, WeightsError
from cbir.features.base import Extractor, Param, l2_normalize
from cbir.features.cnn_params import POOLINGS, RESIZE_MODES, RUNTIMES, check_cnn_params, input_sides
from cbir.features.keras_backbones import BACKBONES, MIN_INPUT_SIZE, build_backbone, fetch_imagenet_weights
from cbir.features.pooling import RMAC_LEVELS, check_rmac_map, combine_scales, global_pool
from cbir.features.runtimes import NETWORKS, KerasNetwork, convert_to_tflite, openvino_available, runs_without_tensorflow
from cbir.fileio import write_bytes_atomic, write_json_atomic
from cbir.images.decode import resize_image

#: What ``runtime="auto"`` runs each backbone with: the faster of LiteRT and
#: OpenVINO on 2 AVX2 cores (measured in docs/cnn.md).
FASTEST_RUNTIME = {
    "mobilenet": "tflite",
    "mobilenetv2": "tflite",
    "efficientnetb0": "tflite",
    "resnet50": "openvino",
    "vgg16": "tflite",
}
#: Padding colour: the ImageNet mean, which every ``preprocess_input`` maps to
#: (nearly) zero, so the border carries no signal.
PAD_RGB = (124, 116, 104)

_STATE_FILE = "cnn.json"
_TFLITE_FILE = "model.tflite"
_STATE_VERSION = 1
#: Multi-scale by default (cirtorch's 1, 1/sqrt 2, sqrt 2): of every setting
#: measured, the one that raises mAP on both a category-level and an
#: instance-level set (docs/cnn.md).
#: One scale by default: 1, 1/sqrt 2, sqrt 2 (``--scales 1,0.7071,1.4142``) raised Corel-1k mAP
#: 0.906 -> 0.912 and the instance set 0.942 -> 0.951, for 3.6x the network time per image and
#: 4.6x the index time of the instance set (docs/cnn.md): an option, not worth every user's wait.
DEFAULT_SCALES = (1.0,)
#: The multi-scale setting measured in docs/cnn.md.
MULTI_SCALES = (1.0, 0.7071, 1.4142)


class CNNExtractor(Extractor):
    """Pooled last feature map of a pretrained convolutional network.

    Parameters
    ----------
    backbone : {"mobilenet", "mobilenetv2", "efficientnetb0", "resnet50", "vgg16"}
        Network from ``keras.applications``, without its classifier.
        MobileNet is the default: the best trade of quality and speed
        measured (docs/cnn.md).
    weights : str
        ``"imagenet"``: Keras' pretrained weights from its cache
        (``$KERAS_HOME/models/``, downloaded there by Keras if missing);
        ``"none"``: random initialisation from ``seed`` (tests, throughput);
        otherwise the path of a ``.h5`` or ``.weights.h5`` file for the same
        architecture.
    pooling : {"avg", "max", "gem", "rmac"}
        Pooling of the last feature map: global average, max or generalised
        mean, or ``rmac``, the sum of max-pooled regions on a 3-level grid
        (needs a feature map of at least 3 x 3, an input side of 96 or more).
        ``avg`` is the default (docs/cnn.md).
    gem_p : float
        Exponent of generalised-mean pooling (1 is average, large is max).
    input_size : int
        Side of the square network input, at least 32.
    scales : sequence of float
        The image runs at each side ``input_size * scale`` (rounded to a
        multiple of 32, the networks' stride, so ``input_size`` must be one
        unless ``scales`` is ``(1,)``; a side that repeats another is run
        once) and the L2-normalised pooled vectors are averaged. The default
        is one scale (what configs that do not record scales mean too);
        1, 1/sqrt 2 and sqrt 2 (224, 160 and 320 px) costs about 3.6 times
        one scale for a small gain (docs/cnn.md).
    resize : {"squash", "crop", "pad"}
        How an image becomes square: ``squash`` scales both sides to
        ``input_size`` (aspect ratio lost, nothing cut off); ``crop`` scales
        the shorter side and keeps the centre; ``pad`` scales the longer side
        and pads with the ImageNet mean colour (see :func:`cbir.images.decode.resize_image`).
        ``squash`` is the default: it ranks as well as ``crop`` and better
        than ``pad`` while keeping the whole picture (docs/cnn.md).
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
    title = "CNN"
    runtime_params = ("runtime", "batch_size")
    # Indexes built before multi-scale input ran one scale.
    absent_params = {"scales": [1.0]}
    transform_uses_every_core = True
    parameters = (
        Param("backbone", str, "mobilenet", "Network from keras.applications, without its classifier.", tuple(BACKBONES), option=True),
        Param(
            "weights", str, "imagenet",
            "imagenet: Keras' cache, downloaded if missing; none: random; or a .h5 / .weights.h5 FILE.",
            ("imagenet", "none"), path=True, option=True,
        ),
        Param("pooling", str, "avg", "Pooling of the last feature map (rmac: max-pooled regions).", POOLINGS, option=True),
        Param("gem_p", float, 3.0, "Exponent of gem pooling (1 is avg, large is max).", option=True),
        Param("input_size", int, 224, f"Network input side in pixels (at least {MIN_INPUT_SIZE}).", option=True),
        Param(
            "scales", list, DEFAULT_SCALES,
            "Run the network at each side input size x scale (multiples of 32) and average the vectors; 1 for one scale.",
            option=True, item=float,
        ),
        Param("resize", str, "squash", "How an image becomes a square.", RESIZE_MODES, option=True),
        Param(
            "runtime", str, "auto",
            "What runs the network, same vectors: auto is the faster of tflite (LiteRT) and openvino for the backbone, "
            "keras the reference.",
            RUNTIMES, option=True,
        ),
        Param("batch_size", int, 32, "Images per forward pass (bounds memory)."),
        Param("seed", int, 0, "Seed of the random weights (--weights none).", option=True),
    )

    def __init__(
        self,
        backbone: str = "mobilenet",
        weights: str = "imagenet",
        pooling: str = "avg",
        gem_p: float = 3.0,
        input_size: int = 224,
        scales: Sequence[float] = DEFAULT_SCALES,
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
        self.scales = scales
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
        check_cnn_params(self)
        if self.runtime == "openvino" and not openvino_available():
            raise UsageError("the openvino runtime needs the openvino package, which is not installed: pip install 'cbir[cnn]'; or use --runtime tflite")

    @property
    def input_sides(self) -> list[int]:
        """The network input side of each scale, in the order of ``scales`` (see :func:`input_sides`)."""
        return input_sides(self.input_size, self.scales)

    @property
    def decode_min_side(self) -> int:
        return max(self.input_sides)

    @property
    def dim(self) -> int:
        return BACKBONES[self.backbone].dim

    @property
    def is_loaded(self) -> bool:
        """Whether the network is built (it is built on first use otherwise)."""
        return hasattr(self, "networks_")

    @property
    def embeds_in_workers(self) -> bool:
        # A cached converted model loads in ~0.1 s with LiteRT or OpenVINO; the
        # Keras runtime, TensorFlow's own interpreter (no LiteRT installed) or a
        # state without a converted model (built with Keras) need TensorFlow.
        return runs_without_tensorflow(self.engine) and not getattr(self, "_converted_on_load", False)

    @property
    def engine(self) -> str:
        """The runtime that actually runs: ``auto`` resolved for this backbone."""
        if self.runtime != "auto":
            return self.runtime
        fastest = FASTEST_RUNTIME[self.backbone]
        return fastest if fastest != "openvino" or openvino_available() else "tflite"

    # -- loading -----------------------------------------------------------
    def build(self, progress: Any = None) -> "CNNExtractor":
        """Build the network now rather than at the first :meth:`transform`.

        Loading the weights and converting them for LiteRT/OpenVINO takes
        seconds (TensorFlow's import most of it); ``progress`` is told.
        """
        if not self.is_loaded:
            if progress is not None:
                progress.status(f"loading {self.backbone} (TensorFlow import and conversion take a few seconds)")
            self._ensure_loaded()
        return self

    # -- embedding ---------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """An RGB uint8 image resized to ``(side, side, 3)`` uint8, one per scale
        (a tuple with several scales; each from the decoded image, not from another scale)."""
        resized = tuple(resize_image(image, side, self.resize, fill=PAD_RGB) for side in self.input_sides)
        return resized[0] if len(resized) == 1 else resized

    def _transform_prepared(self, items: Sequence[np.ndarray | tuple[np.ndarray, ...]]) -> np.ndarray:
        self._ensure_loaded()
        sides = self.input_sides
        per_scale = []
        for scale, side in enumerate(sides):
            pooled = []
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                # uint8 in: preprocess_input runs inside the network.
                batch = np.stack(chunk if len(sides) == 1 else [item[scale] for item in chunk])
                pooled.append(self._pool(self.networks_[side](batch)))
            per_scale.append(np.concatenate(pooled))
        return l2_normalize(combine_scales(per_scale))

    def feature_map(self, item: np.ndarray | tuple[np.ndarray, ...]) -> np.ndarray:
        """The last convolutional activations ``(h, w, c)`` of one prepared item, at the
        input size (the scale nearest 1): what :mod:`cbir.features.contributions` explains."""
        self._ensure_loaded()
        sides = self.input_sides
        scale = int(np.argmin([abs(side - self.input_size) for side in sides]))
        image = item if len(sides) == 1 else item[scale]
        return np.asarray(self.networks_[sides[scale]](image[None]))[0]

    def _pool(self, feature_map: np.ndarray) -> np.ndarray:
        if self.pooling == "rmac":
            check_rmac_map(feature_map.shape[1], feature_map.shape[2], RMAC_LEVELS)
        return global_pool(feature_map, self.pooling, float(self.gem_p))

    # -- building the network ----------------------------------------------
    def _ensure_loaded(self) -> None:
        if self.is_loaded:
            return
        self.check_params()
        model = self._build_keras_model()
        if self.engine == "keras":
            self._set_keras_model(model)
        else:
            self._set_converted_model(convert_to_tflite(model))

    def _build_keras_model(self, side: int | None = None):
        """The backbone with the requested weights (for input ``side``); sets ``weights_sha256_``."""
        weights_file = None if self.weights == "none" else self._weights_file()
        side = int(self.input_size) if side is None else side
        model, self.weights_sha256_ = build_backbone(self.backbone, side, weights_file, int(self.seed))
        return model

    def _set_keras_model(self, model) -> None:
        """The reference runtime: a Keras model has a fixed input side, so one per scale."""
        self.model_ = model
        self.networks_ = {
            side: KerasNetwork(model if side == int(self.input_size) else self._build_keras_model(side))
            for side in self.input_sides
        }

    def _weights_file(self) -> Path:
        """The weights file, fetched into Keras' cache first for ``imagenet``."""
        if self.weights == "imagenet":
            return fetch_imagenet_weights(self.backbone, int(self.input_size))
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path

    def _set_converted_model(self, model_bytes: bytes) -> None:
        # One engine per side, all running the same converted model.
        self.networks_ = {side: NETWORKS[self.engine](model_bytes, side) for side in self.input_sides}
        self.network_ = self.networks_.get(int(self.input_size)) or next(iter(self.networks_.values()))
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
            record["converted_model"] = _TFLITE_FILE
        write_json_atomic(directory / _STATE_FILE, record, sort_keys=False)

    def load_state(self, directory: Path) -> "CNNExtractor":
        """Load the model :meth:`save` recorded, refusing any other.

        With LiteRT or OpenVINO the cached ``model.tflite`` is loaded as is
        (no Keras model, no conversion, the weights file is not needed; its
        integrity is the index's to check, see :class:`cbir.store.directory.IndexStore`).
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
        # "tflite_sha256": the key of indexes written before "converted_model".
        if self.engine != "keras" and ("converted_model" in record or "tflite_sha256" in record):
            try:
                model_bytes = tflite_path.read_bytes()
            except OSError as exc:
                raise IndexCorruptError(f"cannot read the cached model {tflite_path}: {exc}") from exc
            self.weights_sha256_ = record["weights_sha256"]
            self._set_converted_model(model_bytes)
            self._converted_on_load = False
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
            self._set_keras_model(model)
        else:
            self._set_converted_model(convert_to_tflite(model))
            self._converted_on_load = True
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
