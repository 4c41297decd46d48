"""Region-based 3D HSV colour histograms, mapped for inner-product search.

The layout is the classic one: the image is split into four corner regions
minus a central ellipse, plus the ellipse itself, and each region gets a 3D
hue/saturation/value histogram. The concatenated histogram is L1-normalised
and square-rooted (the Hellinger mapping), so the dot product of two vectors is
their Bhattacharyya coefficient: similar histograms rank first under FAISS
inner-product search, with no chi-squared distance needed.
"""

from __future__ import annotations

import threading
from typing import Sequence

import cv2
import numpy as np

from cbir.errors import UsageError
from cbir.features.base import Extractor, Param, l2_normalize
from cbir.images.decode import resize_image


class ColorHistogram(Extractor):
    """3D HSV histogram over five regions (four corners and a central ellipse).

    Parameters
    ----------
    bins : sequence of 3 ints, default (8, 12, 3)
        Hue, saturation and value bins per region. The vector length is
        ``5 * h * s * v`` (1440 by default).
    min_side : int, default 128
        Images are processed at a reduced scale as long as their shorter side
        stays at least this long; colour statistics need few pixels, and a
        smaller image decodes and histograms several times faster.
    """

    name = "color"
    title = "Colour histogram"
    parameters = (
        Param("bins", list, (8, 12, 3), "Hue, saturation and value bins per region.", option=True),
        Param("min_side", int, 128, "Images are histogrammed at a reduced scale down to this shorter side."),
    )

    def __init__(self, bins: Sequence[int] = (8, 12, 3), min_side: int = 128):
        self.bins = bins
        self.min_side = min_side
        self._regions: dict[tuple[int, int], np.ndarray] = {}
        self._regions_lock = threading.Lock()

    def check_params(self) -> None:
        bins = list(self.bins)
        if len(bins) != 3 or not all(isinstance(b, int) and 1 <= b <= 256 for b in bins):
            raise UsageError(f"color bins must be three integers between 1 and 256 (hue, saturation, value), got {self.bins!r}")
        if bins[0] > 180:
            raise UsageError("color bins: OpenCV hue has 180 levels, so at most 180 hue bins")
        if 5 * bins[0] * bins[1] * bins[2] > 1_000_000:
            raise UsageError(f"color bins {bins} give more than a million dimensions; use fewer bins")
        if not isinstance(self.min_side, int) or self.min_side < 8:
            raise UsageError(f"color min_side must be an integer >= 8, got {self.min_side!r}")

    @property
    def dim(self) -> int:
        h, s, v = self.bins
        return 5 * h * s * v

    @property
    def decode_min_side(self) -> int:
        return self.min_side

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Hellinger-mapped histogram of one RGB image (all five regions, concatenated)."""
        # Non-JPEG inputs arrive at full size; bring them near min_side too.
        image = resize_image(image, self.min_side, "reduce")
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        # The region number is a fourth channel, so one calcHist call (C++,
        # GIL released) counts all five regions; regions first in the vector.
        regions = self._region_map(hsv.shape[:2])
        h_bins, s_bins, v_bins = (int(b) for b in self.bins)
        counts = cv2.calcHist(
            [hsv, regions], [0, 1, 2, 3], None, [h_bins, s_bins, v_bins, 5], [0, 180, 0, 256, 0, 256, 0, 5]
        )
        hist = np.ascontiguousarray(np.moveaxis(counts, 3, 0)).ravel()
        # One L1 normalisation over all regions keeps each region weighted by
        # its area (the ellipse counts most); it ranks better than
        # per-region normalisation (docs/color.md).
        hist /= max(float(hist.sum()), 1.0)
        return np.sqrt(hist)

    def _transform_prepared(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return l2_normalize(np.stack(items))

    def _region_map(self, shape: tuple[int, int]) -> np.ndarray:
        regions = self._regions.get(shape)
        if regions is None:
            with self._regions_lock:
                regions = self._regions.setdefault(shape, region_map(*shape))
        return regions


def region_map(height: int, width: int) -> np.ndarray:
    """Region number of every pixel: 0-3 the corners (clockwise from top left) minus the ellipse, 4 the ellipse.

    The ellipse is centred, with axes three quarters of the half-width and
    half-height: the classic layout of region-based colour histograms.
    """
    cx, cy = width // 2, height // 2
    ellipse = np.zeros((height, width), dtype=np.uint8)
    axes = (max(1, int(width * 0.75) // 2), max(1, int(height * 0.75) // 2))
    cv2.ellipse(ellipse, (cx, cy), axes, 0, 0, 360, 1, -1)
    regions = np.empty((height, width), dtype=np.uint8)
    regions[:cy, :cx], regions[:cy, cx:], regions[cy:, cx:], regions[cy:, :cx] = 0, 1, 2, 3
    regions[ellipse == 1] = 4
    return regions
