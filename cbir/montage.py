"""A query and its matches as one labelled grid image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from cbir.errors import ImageError, UsageError
from cbir.fileio import write_bytes_atomic
from cbir.images import read_image
from cbir.search import QueryResult

_WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_BACKGROUND = (255, 255, 255)
_CAPTION_HEIGHT = 34


def make_montage(result: QueryResult, tile: int = 192, columns: int = 6) -> np.ndarray:
    """RGB image: the query first (framed in blue), then each match with rank, score and file name."""
    if tile < 32 or columns < 1:
        raise UsageError("montage tiles must be at least 32 px and columns at least 1")
    tiles = [_tile(result.query, tile, "query", Path(result.query).name, frame=(40, 90, 220))]
    for match in result.results:
        tiles.append(_tile(match.path, tile, f"#{match.rank}  {match.score:.3f}", Path(match.path).name))
    rows = (len(tiles) + columns - 1) // columns
    columns = min(columns, len(tiles))
    height = tile + _CAPTION_HEIGHT
    canvas = np.full((rows * height, columns * tile, 3), _BACKGROUND, dtype=np.uint8)
    for n, image in enumerate(tiles):
        r, c = divmod(n, columns)
        canvas[r * height : (r + 1) * height, c * tile : (c + 1) * tile] = image
    return canvas


def write_montage(result: QueryResult, out_path: str | os.PathLike, tile: int = 192, columns: int = 6) -> Path:
    """Render :func:`make_montage` and write it (atomically) to ``out_path``."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in _WRITABLE_SUFFIXES:
        raise UsageError(f"montage file must end in one of {', '.join(_WRITABLE_SUFFIXES)}: {out_path}")
    if not out_path.parent.is_dir():
        raise UsageError(f"folder for the montage does not exist: {out_path.parent}")
    canvas = make_montage(result, tile, columns)
    ok, encoded = cv2.imencode(out_path.suffix.lower(), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UsageError(f"cannot encode a montage as {out_path.suffix}")
    try:
        write_bytes_atomic(out_path, encoded.tobytes())
    except OSError as exc:
        raise UsageError(f"cannot write montage {out_path}: {exc.strerror or exc}") from None
    return out_path


def _tile(path: str, size: int, line1: str, line2: str, frame: Sequence[int] | None = None) -> np.ndarray:
    tile = np.full((size + _CAPTION_HEIGHT, size, 3), _BACKGROUND, dtype=np.uint8)
    try:
        image = read_image(path, min_side=size)
    except ImageError:
        image = None  # a file gone since indexing: leave the tile blank, keep its caption
    if image is not None:
        h, w = image.shape[:2]
        scale = (size - 4) / max(h, w)
        resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        rh, rw = resized.shape[:2]
        top, left = (size - rh) // 2, (size - rw) // 2
        tile[top : top + rh, left : left + rw] = resized
    if frame is not None:
        cv2.rectangle(tile, (0, 0), (size - 1, size - 1), tuple(int(c) for c in frame), 3)
    _text(tile, line1, size + 14, 0.45)
    _text(tile, _shorten(line2, size), size + 29, 0.38)
    return tile


def _text(tile: np.ndarray, text: str, baseline: int, scale: float) -> None:
    cv2.putText(tile, text, (4, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)


def _shorten(text: str, width: int) -> str:
    # Hershey glyphs at scale 0.38 are about 7 px wide.
    limit = max(4, width // 7)
    return text if len(text) <= limit else text[: limit - 1] + "~"
