"""The autoencoder network: its layout, the embedding network cut from it, and its ``.keras`` files.

Encoder: ``len(filters)`` blocks of a stride-2 3x3 convolution, optional
batch normalisation and ReLU, then a 1x1 convolution to ``latent_channels``
(the bottleneck, ``input_size / 2**len(filters)`` pixels square). Decoder:
the mirror image with stride-2 transposed convolutions, ending in a sigmoid
on inputs scaled to [0, 1].

The embedding network is the encoder behind a uint8 input, with the
descriptor computed inside the graph, so that Keras, LiteRT and OpenVINO run
one and the same network (see :func:`embedding_network`).

Models are stored in Keras' ``.keras`` format only and loaded in safe mode:
HDF5 files ignore safe mode (CVE-2025-9905), so they are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cbir.errors import UsageError, WeightsError
from cbir.features.autoencoder.params import MODEL_SUFFIX
from cbir.features._tensorflow import import_keras
from cbir.fileio import atomic_path



def block_name(index: int) -> str:
    return f"encoder_block{index + 1}"


def build_autoencoder(
    *, input_size: int, channels: int, filters: list[int], latent_channels: int, batch_norm: bool, seed: int = 0
):
    """The autoencoder as one functional model; see the module docstring for the layout.

    Kernels are Glorot-uniform from ``seed`` (one seed per layer), so the
    initial weights depend on ``seed`` alone, without seeding any global
    generator (Python's, NumPy's, TensorFlow's).
    """
    keras = import_keras()
    layers = keras.layers
    seeds = iter(range(int(seed) * 1000, int(seed) * 1000 + 1000))

    def kernel():
        return keras.initializers.GlorotUniform(seed=next(seeds))

    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = inputs
    for i, n_filters in enumerate(filters):
        # Without BatchNorm the convolution needs its bias; with it, BN's beta replaces it.
        x = layers.Conv2D(n_filters, 3, strides=2, padding="same", use_bias=not batch_norm, kernel_initializer=kernel(), name=f"encoder_conv{i + 1}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"encoder_bn{i + 1}")(x)
        x = layers.ReLU(name=block_name(i))(x)
    x = layers.Conv2D(latent_channels, 1, kernel_initializer=kernel(), name="latent")(x)
    for i, n_filters in enumerate(reversed(filters[:-1])):
        x = layers.Conv2DTranspose(n_filters, 3, strides=2, padding="same", use_bias=not batch_norm, kernel_initializer=kernel(), name=f"decoder_conv{i + 1}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"decoder_bn{i + 1}")(x)
        x = layers.ReLU(name=f"decoder_block{i + 1}")(x)
    outputs = layers.Conv2DTranspose(channels, 3, strides=2, padding="same", activation="sigmoid", kernel_initializer=kernel(), name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="autoencoder")


def architecture_of(model: Any) -> dict[str, Any]:
    """The architecture parameters of a model built by :func:`build_autoencoder`.

    Raises
    ------
    WeightsError
        If the model was not built by this module.
    """
    names = {layer.name: layer for layer in model.layers}
    try:
        _, height, width, channels = model.inputs[0].shape
        filters = []
        while f"encoder_conv{len(filters) + 1}" in names:
            filters.append(int(names[f"encoder_conv{len(filters) + 1}"].filters))
        latent_channels = int(names["latent"].filters)
    except (KeyError, ValueError, AttributeError, IndexError):
        raise WeightsError(f"model {model.name!r} is not a cbir autoencoder") from None
    if not filters or height != width:
        raise WeightsError(f"model {model.name!r} is not a cbir autoencoder")
    return {
        "input_size": int(height),
        "channels": int(channels),
        "filters": filters,
        "latent_channels": latent_channels,
        "batch_norm": "encoder_bn1" in names,
    }


def embedding_network(model: Any, embedding: str):
    """The encoder of ``model`` as uint8 images in, descriptors out (not yet L2-normalised).

    ``"pool"``: the mean and the max over the spatial positions of every
    encoder block, each part L2-normalised (so that no block, the wide deep
    ones having larger activations, drowns out the others), concatenated.
    ``"flatten"``: the bottleneck map flattened.
    """
    keras = import_keras()
    ops = keras.ops
    n_blocks = len(architecture_of(model)["filters"])
    outputs = [model.get_layer(block_name(i)).output for i in range(n_blocks)] + [model.get_layer("latent").output]
    encoder = keras.Model(model.inputs, outputs, name="encoder")
    inputs = keras.Input(model.inputs[0].shape[1:], dtype="uint8", name="pixels")
    *blocks, latent = encoder(ops.cast(inputs, "float32") / 255.0)
    if embedding == "flatten":
        vectors = keras.layers.Flatten(name="flattened")(latent)
    else:
        parts = []
        for block in blocks:
            for pooled in (ops.mean(block, axis=(1, 2)), ops.max(block, axis=(1, 2))):
                norm = ops.sqrt(ops.sum(pooled * pooled, axis=1, keepdims=True))
                parts.append(pooled / ops.maximum(norm, 1e-12))
        vectors = ops.concatenate(parts, axis=1)
    return keras.Model(inputs, vectors, name=f"autoencoder_{embedding}")


def load_model(path: Path) -> Any:
    """Load a ``.keras`` file in safe mode, uncompiled.

    Raises
    ------
    UsageError
        If the file is not a ``.keras`` file (HDF5 models ignore safe mode).
    WeightsError
        If the file is missing or is not a loadable Keras model.
    """
    path = Path(path)
    if path.suffix != MODEL_SUFFIX:
        raise UsageError(f"autoencoder models must be {MODEL_SUFFIX} files (HDF5 models can run code when loaded); got {path}")
    if not path.is_file():
        raise WeightsError(f"no autoencoder model at {path}")
    keras = import_keras()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile and h5py errors alike
        raise WeightsError(f"cannot load autoencoder model {path}: {exc}") from exc


def save_model(model: Any, path: Path) -> None:
    """Write a ``.keras`` file so that readers only ever see a complete one."""
    with atomic_path(path) as temporary:
        model.save(temporary)
