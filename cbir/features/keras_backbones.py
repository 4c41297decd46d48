"""The ``keras.applications`` networks the CNN extractor can use, and how to build them.

This module knows the backbones (:data:`BACKBONES`: constructor, feature
size, where Keras keeps and downloads the ImageNet weights), finds those
weights (:func:`fetch_imagenet_weights`) and builds a backbone behind its own
``preprocess_input`` with ImageNet, file or seeded random weights
(:func:`build_backbone`). TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.errors import WeightsError
from cbir.features._tensorflow import import_keras
from cbir.fileio import file_sha256


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

#: Smallest input ``keras.applications`` accepts for these networks.
MIN_INPUT_SIZE = 32


def build_backbone(backbone: str, input_size: int, weights_file: Path | None, seed: int = 0):
    """The backbone without its classifier, behind a uint8 RGB input and its ``preprocess_input``.

    Parameters
    ----------
    backbone : str
        A key of :data:`BACKBONES`.
    input_size : int
    weights_file : path or None
        A ``.h5`` / ``.weights.h5`` file for this architecture; ``None`` for
        He-normal random weights drawn from ``seed``.

    Returns
    -------
    (keras.Model, str)
        The network, and the SHA-256 of its weights: of the file, or of the
        random weight arrays.

    Raises
    ------
    WeightsError
        The file does not fit the network or is damaged.
    """
    keras = import_keras()
    constructor = getattr(keras.applications, BACKBONES[backbone].constructor)
    model = constructor(include_top=False, weights=None, input_shape=(int(input_size), int(input_size), 3))
    if weights_file is None:
        _randomize(model, int(seed))
        digest = _weights_digest(model)
    else:
        try:
            # A mismatched file warns once per layer before failing; the
            # failure alone is the message.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load_weights(weights_file)
        except (OSError, ValueError, KeyError) as exc:
            # Keras' first line goes on with "Example error message for ...:".
            reason = first_line(exc).split(". ")[0].rstrip(":. ")
            raise WeightsError(
                f"cannot load {weights_file} into {backbone} (include_top=False): {reason} "
                f"(weights of another network, or a damaged file?)"
            ) from exc
        digest = file_sha256(weights_file)
    return _with_preprocessing(keras, model, backbone), digest


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
    spec = BACKBONES[backbone]
    name = spec.cache_name(input_size)
    # KERAS_HOME is read now rather than when Keras was imported, so a
    # process (or a test) that sets it later still gets the cache it names.
    cache_dir = os.environ.get("KERAS_HOME")
    cached = Path(cache_dir or Path.home() / ".keras") / "models" / name
    if cached.is_file() and spec.file_hash is None:
        return cached  # nothing to check: no need to import Keras to find it
    keras = import_keras()
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
        raise WeightsError(
            f"cannot download the ImageNet weights of {backbone} ({first_line(exc)}); "
            f"place the file at {cached} or pass --weights FILE"
        ) from exc
    return Path(path)


def _weights_digest(model) -> str:
    """SHA-256 over a model's weight arrays, in order."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _with_preprocessing(keras, backbone_model, backbone: str):
    """The backbone behind a uint8 RGB input and its own ``preprocess_input``.

    Inside the graph, preprocessing runs in TensorFlow's and TFLite's kernels
    rather than in NumPy on the main thread, and every runtime shares it.
    The network's weights are untouched.
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
