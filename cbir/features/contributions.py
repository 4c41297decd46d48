"""Where in an image its similarity to a query comes from: the regions that contributed most (``--explain``).

For a result that spatial verification did not confirm there are no
correspondences to draw, so this says which part of the result looks like the
query to the global descriptor. Two ways, by what the extractor exposes:

* ``activation`` (CNN extractors): one forward pass; each cell of the last
  feature map scores the dot product of its activations with the query's
  direction in the extractor's space (the query vector taken back through
  the PCA and whitening). For average pooling the cells' scores sum to the
  similarity itself (up to the normalisations); for GeM, max and R-MAC they
  show the same evidence, weighted linearly. The *box* is the R-MAC region
  (of cirtorch's grid on the map) whose own pooled vector is closest to the
  query: for ``--pooling rmac`` one of the very regions summed.
* ``regions`` (every other extractor: colour histograms, the autoencoder):
  the image cropped to the R-MAC grid of regions (its second and third
  levels: the first's crops are nearly the whole image), each crop embedded
  as an image of its own and compared with the query; the box is the best
  crop and each cell's heat the best score of a crop covering it.

Pure functions of an :class:`~cbir.features.pipeline.Embedder`, an RGB
image and a unit query vector; nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbir.features.pooling import RMAC_LEVELS, global_pool, rmac_regions

#: The virtual grid crops are cut from: this many cells along the shorter side.
_REGION_CELLS = 6


@dataclass(frozen=True)
class RegionMap:
    """What contributed to a match: a heat grid over the whole image and its best region."""

    #: ``"activation"`` (a CNN's last feature map) or ``"regions"`` (crops embedded).
    kind: str
    #: ``(rows, columns)`` float32 in [0, 1] over the image's extent; 1 where most came from.
    grid: np.ndarray
    #: The best region ``(x0, y0, x1, y1)`` as fractions of the image's width and height.
    box: tuple[float, float, float, float]
    #: That region's own similarity to the query (cosine; for ``activation`` in the extractor's space).
    score: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "box": [round(v, 4) for v in self.box], "score": round(self.score, 4), "grid": np.round(self.grid, 3).tolist()}


def region_map(embedder, image: np.ndarray, query: np.ndarray) -> RegionMap:
    """:class:`RegionMap` of an RGB uint8 ``image`` for the unit ``query`` vector (the index's space)."""
    query = np.asarray(query, np.float32).ravel()
    extractor = embedder.extractor
    if hasattr(extractor, "feature_map"):
        return activation_map(extractor.feature_map(extractor.prepare(image)), extractor_direction(embedder, query), extractor.pooling, extractor.gem_p, extractor.resize, image.shape[:2])
    return crop_map(embedder, image, query)


def extractor_direction(embedder, query: np.ndarray) -> np.ndarray:
    """The query as a direction in the extractor's space: back through the PCA (and its whitening), unit length."""
    pca = embedder.pca
    direction = query
    if pca is not None:
        weights = query / pca.scales_ if pca.whiten else query
        direction = pca.components_.T @ weights.astype(np.float32)
    return (direction / max(float(np.linalg.norm(direction)), 1e-12)).astype(np.float32)


def activation_map(
    feature_map: np.ndarray, direction: np.ndarray, pooling: str, gem_p: float = 3.0, resize: str = "squash", image_shape=(1, 1)
) -> RegionMap:
    """The ``activation`` map of one ``(h, w, c)`` feature map for ``direction`` (see the module docstring)."""
    height, width = feature_map.shape[:2]
    cells = np.maximum(feature_map @ direction, 0.0)
    grid = (cells / max(float(cells.max()), 1e-12)).astype(np.float32)
    boxes = [(0, 0, min(height, width))]
    if min(height, width) >= RMAC_LEVELS:  # the map's R-MAC regions, not the whole map (that is the global score)
        boxes = [r for r in rmac_regions(height, width) if not r[2] >= max(height, width)] or boxes
    crops = np.stack([_pooled(feature_map[t : t + s, l : l + s], pooling, gem_p) for t, l, s in boxes])
    crops /= np.maximum(np.linalg.norm(crops, axis=1, keepdims=True), 1e-12)
    scores = crops @ direction
    best = int(np.argmax(scores))
    top, left, side = boxes[best]
    box = (left / width, top / height, min(left + side, width) / width, min(top + side, height) / height)
    grid, box = _onto_image(grid, box, resize, image_shape)
    return RegionMap("activation", grid, box, float(scores[best]))


def _pooled(block: np.ndarray, pooling: str, gem_p: float) -> np.ndarray:
    return global_pool(block[None], "max" if pooling == "rmac" else pooling, gem_p)[0]


def _onto_image(grid: np.ndarray, box, resize: str, image_shape) -> tuple[np.ndarray, tuple]:
    """The network input's grid and box as fractions of the image (``crop`` saw its centre, ``pad`` a letterbox)."""
    height, width = image_shape
    if resize not in ("crop", "pad") or height == width:
        return grid, box
    aspect = width / height
    # The part of the square input the image fills (pad), or of the image the input saw (crop), per axis.
    if resize == "pad":
        fx, fy = (1.0, 1 / aspect) if aspect > 1 else (aspect, 1.0)
        x0, y0, x1, y1 = ((v - (1 - f) / 2) / f for v, f in zip(box, (fx, fy, fx, fy)))
        rows, cols = grid.shape
        r0, r1 = int(round(rows * (1 - fy) / 2)), rows - int(round(rows * (1 - fy) / 2))
        c0, c1 = int(round(cols * (1 - fx) / 2)), cols - int(round(cols * (1 - fx) / 2))
        return grid[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)], tuple(float(np.clip(v, 0, 1)) for v in (x0, y0, x1, y1))
    fx, fy = (1 / aspect, 1.0) if aspect > 1 else (1.0, aspect)  # crop: the centre square of the image
    x0, y0, x1, y1 = ((1 - f) / 2 + v * f for v, f in zip(box, (fx, fy, fx, fy)))
    rows, cols = grid.shape
    full = np.zeros((int(round(rows / fy)), int(round(cols / fx))), np.float32)
    r0, c0 = (full.shape[0] - rows) // 2, (full.shape[1] - cols) // 2
    full[r0 : r0 + rows, c0 : c0 + cols] = grid
    return full, (x0, y0, x1, y1)


def crop_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` pixel boxes of the R-MAC grid of regions on an image, the whole image first."""
    short = _REGION_CELLS
    rows, cols = (short, max(short, round(short * width / height))) if width >= height else (max(short, round(short * height / width)), short)
    cell_h, cell_w = height / rows, width / cols
    boxes = [(0, 0, width, height)]
    for top, left, side in rmac_regions(rows, cols):
        if side >= min(rows, cols):
            continue  # the whole image (first) and the first level's full-height squares: a larger crop's
            # histogram is always nearer the whole image's, so they would win and say nothing
        boxes.append((int(left * cell_w), int(top * cell_h), int(round((left + side) * cell_w)), int(round((top + side) * cell_h))))
    return boxes


def crop_map(embedder, image: np.ndarray, query: np.ndarray) -> RegionMap:
    """The ``regions`` map: each crop of :func:`crop_boxes` embedded and compared with ``query``."""
    height, width = image.shape[:2]
    boxes = crop_boxes(height, width)
    crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
    scores = embedder.transform(crops) @ query
    rows, cols = (_REGION_CELLS * 2, max(1, round(_REGION_CELLS * 2 * width / height)))
    heat = np.full((rows, cols), -np.inf, np.float32)
    for (x0, y0, x1, y1), score in zip(boxes[1:], scores[1:]):
        r0, r1 = int(y0 / height * rows), max(int(np.ceil(y1 / height * rows)), int(y0 / height * rows) + 1)
        c0, c1 = int(x0 / width * cols), max(int(np.ceil(x1 / width * cols)), int(x0 / width * cols) + 1)
        heat[r0:r1, c0:c1] = np.maximum(heat[r0:r1, c0:c1], score)
    heat = np.where(np.isfinite(heat), heat, scores[1:].min() if len(scores) > 1 else 0.0)
    low, high = float(heat.min()), float(heat.max())
    grid = ((heat - low) / (high - low) if high > low else np.ones_like(heat)).astype(np.float32)
    best = 1 + int(np.argmax(scores[1:])) if len(scores) > 1 else 0
    x0, y0, x1, y1 = boxes[best]
    return RegionMap("regions", grid, (x0 / width, y0 / height, x1 / width, y1 / height), float(scores[best]))
