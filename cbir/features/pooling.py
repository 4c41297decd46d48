"""Pooling a CNN's last feature map into one vector: global, regional (R-MAC) and multi-scale.

Pure NumPy functions over ``(n, height, width, channels)`` activations, so
every runtime (LiteRT, OpenVINO, Keras) shares them and a test can check the
maths on a hand-made map:

* global pooling (:func:`global_pool`): average, max, or generalised mean
  (GeM, Radenović et al. 2018);
* R-MAC (:func:`rmac`, Tolias, Sicre and Jégou, ICLR 2016, as in cirtorch's
  ``rmac``): max-pooled square regions on a grid of ``levels`` scales with
  about 40% overlap, each L2-normalised, summed with the global max;
* multi-scale (:func:`combine_scales`, cirtorch's ``extract_ms``): the vectors
  of one image run at several input sizes, each L2-normalised, averaged.

Every function returns un-normalised rows; the extractor normalises once.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from cbir.errors import UsageError

POOLINGS = ("avg", "max", "gem", "rmac")
#: R-MAC scales: 1 region (the whole map), then 2x2-ish, 3x3-ish grids.
RMAC_LEVELS = 3
# Overlap of neighbouring R-MAC regions that cirtorch (and Tolias et al.) aim for.
_RMAC_OVERLAP = 0.4
# GeM is defined on positive activations; EfficientNet's last one (swish) can
# be slightly negative, so activations are clamped to this floor first.
_GEM_EPS = 1e-6


def global_pool(feature_map: np.ndarray, pooling: str, gem_p: float = 3.0) -> np.ndarray:
    """``(n, h, w, c)`` -> ``(n, c)`` by ``pooling`` (any of :data:`POOLINGS`)."""
    if pooling == "avg":
        return feature_map.mean(axis=(1, 2))
    if pooling == "max":
        return feature_map.max(axis=(1, 2))
    if pooling == "gem":
        return gem(feature_map, gem_p)
    if pooling == "rmac":
        return rmac(feature_map)
    raise UsageError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")


def gem(feature_map: np.ndarray, p: float) -> np.ndarray:
    """Generalised mean over the spatial axes, relative to each channel's peak
    so that ``x ** p`` cannot overflow float32 for large ``p``."""
    p = float(p)
    positive = np.maximum(feature_map, _GEM_EPS)
    peak = positive.max(axis=(1, 2), keepdims=True)
    return peak[:, 0, 0, :] * np.power(np.power(positive / peak, p).mean(axis=(1, 2)), 1.0 / p)


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int]]:
    """The R-MAC regions of a ``height`` x ``width`` map: ``(top, left, side)`` squares.

    cirtorch's grid: at level ``l`` (1..levels) squares of side
    ``floor(2 * min(h, w) / (l + 1))``, ``l`` of them along the shorter side
    and ``l + extra`` along the longer one (``extra`` chosen so neighbours
    overlap by about 40%), spread evenly from edge to edge.

    Raises
    ------
    UsageError
        If the map is too small for distinct regions at every level
        (shorter side below ``levels``).
    """
    check_rmac_map(height, width, levels)
    short, long = min(height, width), max(height, width)
    extra = 0
    if long != short:
        steps = np.arange(2, 8)  # regions along the longer side that cirtorch considers
        step = (long - short) / (steps - 1)
        extra = int(np.argmin(np.abs((short**2 - short * step) / short**2 - _RMAC_OVERLAP))) + 1
    extra_h, extra_w = (extra, 0) if height > width else (0, extra)
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        tops = _starts(height, side, level + extra_h)
        lefts = _starts(width, side, level + extra_w)
        regions.extend((top, left, side) for top in tops for left in lefts)
    return regions


def _starts(length: int, side: int, count: int) -> list[int]:
    """``count`` start offsets of windows of ``side`` spread evenly over ``length``."""
    if count == 1:
        return [0]
    step = (length - side) / (count - 1)
    half = math.floor(side / 2 - 1)
    return [int(math.floor(half + i * step) - half) for i in range(count)]


def check_rmac_map(height: int, width: int, levels: int = RMAC_LEVELS) -> None:
    """Refuse a feature map too small for R-MAC's ``levels`` (see :func:`rmac_regions`)."""
    if min(height, width) < levels:
        raise UsageError(
            f"rmac pooling needs a feature map of at least {levels} x {levels}; this network gives "
            f"{height} x {width} at the smallest input size: use a larger --input-size or larger --scales"
        )


def rmac(feature_map: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    """Sum of the L2-normalised max-pooled regions (and the whole map): ``(n, c)``."""
    n, height, width, channels = feature_map.shape
    total = _normalised(feature_map.max(axis=(1, 2)))
    for top, left, side in rmac_regions(height, width, levels):
        total += _normalised(feature_map[:, top : top + side, left : left + side, :].max(axis=(1, 2)))
    return total


def combine_scales(per_scale: Sequence[np.ndarray]) -> np.ndarray:
    """Multi-scale descriptor: the mean of each scale's L2-normalised ``(n, c)`` vectors."""
    if len(per_scale) == 1:
        return per_scale[0]
    return np.mean([_normalised(vectors) for vectors in per_scale], axis=0)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
