"""The CNN extractor's parameters: which values it accepts, and the input side of each scale.

Checked before anything is built, so a bad option is one clear error at
``cbir index`` time rather than a failure inside a network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cbir.errors import UsageError
from cbir.features.keras_backbones import BACKBONES, MIN_INPUT_SIZE
from cbir.features.pooling import POOLINGS, RMAC_LEVELS, check_rmac_map

if TYPE_CHECKING:
    from cbir.features.cnn import CNNExtractor

RESIZE_MODES = ("squash", "crop", "pad")
RUNTIMES = ("auto", "tflite", "openvino", "keras")
#: Most scales of one image (each one a forward pass).
MAX_SCALES = 5
#: Largest input side any scale may give.
MAX_INPUT_SIDE = 2048
#: Output stride of every backbone: a side of ``s`` pixels gives a feature
#: map of about ``s / 32`` cells (at least ``floor(s / 32)``).
NETWORK_STRIDE = 32


def input_sides(input_size: int, scales: Sequence[float]) -> list[int]:
    """The network input side of each scale, in the order of ``scales``.

    Other scales than 1 are rounded to a multiple of the stride: the
    converter folds each padding into its convolution as "same" padding,
    which is the network's own padding only where every strided layer sees
    an even side, as it does at the converted side (checked for every
    backbone against Keras built at the other side; an odd side gave another
    feature map).
    """
    sides = [
        int(input_size) if scale == 1 else NETWORK_STRIDE * round(float(input_size) * float(scale) / NETWORK_STRIDE)
        for scale in scales
    ]
    # At small sizes scales can round to one side (all of 1, 1/sqrt 2, sqrt 2 give 32 at 32 px): run it once.
    return list(dict.fromkeys(sides))


def check_cnn_params(extractor: "CNNExtractor") -> None:
    """Raise :class:`UsageError` for a parameter of ``extractor`` that cannot work."""
    _check_choice("backbone", extractor.backbone, BACKBONES)
    _check_choice("pooling", extractor.pooling, POOLINGS)
    _check_choice("resize", extractor.resize, RESIZE_MODES)
    _check_choice("runtime", extractor.runtime, RUNTIMES)
    if not isinstance(extractor.weights, str) or not extractor.weights:
        raise UsageError(f"weights must be 'imagenet', 'none' or a file path, got {extractor.weights!r}")
    if extractor.weights not in ("imagenet", "none") and not extractor.weights.endswith((".h5", ".hdf5")):
        raise UsageError(
            f"weights file {extractor.weights!r} must be a Keras .h5 or .weights.h5 file "
            "(or use 'imagenet' or 'none')"
        )
    if not _is_int(extractor.input_size) or extractor.input_size < MIN_INPUT_SIZE:
        raise UsageError(f"input size must be an integer of at least {MIN_INPUT_SIZE}, got {extractor.input_size!r}")
    if not _is_int(extractor.batch_size) or extractor.batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {extractor.batch_size!r}")
    if not _is_int(extractor.seed):
        raise UsageError(f"seed must be an integer, got {extractor.seed!r}")
    if isinstance(extractor.gem_p, bool) or not isinstance(extractor.gem_p, (int, float)) or not extractor.gem_p > 0:
        raise UsageError(f"GeM exponent must be a positive number, got {extractor.gem_p!r}")
    _check_scales(extractor)
    if extractor.pooling == "rmac":
        side = min(extractor.input_sides) // NETWORK_STRIDE
        try:
            check_rmac_map(side, side, RMAC_LEVELS)
        except UsageError:
            smallest = RMAC_LEVELS * NETWORK_STRIDE
            raise UsageError(
                f"rmac pooling needs a feature map of at least {RMAC_LEVELS} x {RMAC_LEVELS}: {extractor.backbone} gives "
                f"{side} x {side} at input side {min(extractor.input_sides)}; use input sides of at least {smallest} "
                f"(--input-size, --scales) or another --pooling"
            ) from None


def _check_scales(extractor: "CNNExtractor") -> None:
    scales = extractor.scales
    if (
        isinstance(scales, (str, bytes))
        or not isinstance(scales, Sequence)
        or not scales
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) and x > 0 for x in scales)
    ):
        raise UsageError(f"scales must be a list of positive numbers such as 1,0.7071,1.4142; got {scales!r}")
    if len(scales) > MAX_SCALES:
        raise UsageError(f"at most {MAX_SCALES} scales (each one runs the network again), got {len(scales)}")
    if any(x != 1 for x in scales) and extractor.input_size % NETWORK_STRIDE:
        raise UsageError(
            f"scales other than 1 need an input size that is a multiple of {NETWORK_STRIDE} "
            f"(the networks' stride), got {extractor.input_size}; or use --scales 1"
        )
    sides = extractor.input_sides
    if not MIN_INPUT_SIZE <= min(sides) or max(sides) > MAX_INPUT_SIDE:
        raise UsageError(
            f"scales {list(scales)} give input sides {sides} at input size {extractor.input_size}; "
            f"each must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIDE} pixels"
        )


def _check_choice(what: str, value: Any, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
