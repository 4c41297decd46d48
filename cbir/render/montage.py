"""Results as one labelled grid image: a query and its matches, or groups of near-duplicates.

Each tile keeps the picture's aspect ratio and is captioned with its rank and
score (or role) and its parent folder and file name; a file that is gone since
it was indexed gets a marked, crossed tile instead of a blank one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from cbir.display import display_path
from cbir.errors import ImageError, UsageError
from cbir.fileio import write_bytes_atomic
from cbir.images.video import describe_frame, read_picture
from cbir.retrieval.results import QueryResult

_WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_BACKGROUND = (255, 255, 255)
_CAPTION_HEIGHT = 34
_QUERY_FRAME = (40, 90, 220)
_MISSING = (200, 30, 30)
_VERIFIED = (30, 170, 60)


@dataclass(frozen=True)
class Tile:
    """One picture of a grid: its file and the caption's first line."""

    path: str
    caption: str
    frame: tuple[int, int, int] | None = None
    #: A video's frame: its time in seconds (the tile shows that frame, named ``clip.mp4 @ 01:23``).
    time: float | None = None


def short_name(path: str | os.PathLike) -> str:
    """``parent/file.jpg``: enough to tell apart files of the same name in different folders (shown escaped)."""
    path = Path(path)
    return display_path(f"{path.parent.name}/{path.name}" if path.parent.name else path.name)


def result_tiles(result: QueryResult) -> list[Tile]:
    """The query (framed in blue), then each match with rank and score (and a tick if verified)."""
    tiles = [Tile(result.query, "query", _QUERY_FRAME)]
    tiles += [
        Tile(m.path, f"#{m.rank}  {m.score:.3f}" + (f"  v{m.inliers}" if m.verified else ""), _VERIFIED if m.verified else None, m.time)
        for m in result.results
    ]
    return tiles


def make_grid(rows: Sequence[Sequence[Tile]], tile: int = 192, columns: int = 6) -> np.ndarray:
    """RGB image: each row of tiles starts a new line of the grid, wrapping after ``columns``."""
    if tile < 32 or columns < 1:
        raise UsageError("montage tiles must be at least 32 px and columns at least 1")
    lines: list[list[np.ndarray]] = []
    for row in rows:
        rendered = [_tile(t.path, tile, t.caption, describe_frame(short_name(t.path), t.time), t.frame, t.time) for t in row]
        lines += [rendered[i : i + columns] for i in range(0, len(rendered), columns)] or [[]]
    width = max(1, min(columns, max((len(line) for line in lines), default=1)))
    height = tile + _CAPTION_HEIGHT
    canvas = np.full((max(1, len(lines)) * height, width * tile, 3), _BACKGROUND, dtype=np.uint8)
    for r, line in enumerate(lines):
        for c, image in enumerate(line):
            canvas[r * height : (r + 1) * height, c * tile : (c + 1) * tile] = image
    return canvas


def make_montage(result: QueryResult, tile: int = 192, columns: int = 6) -> np.ndarray:
    """RGB image: the query first (framed in blue), then each match with rank, score and file name
    (verified ones framed in green; :mod:`cbir.render.explain` adds why)."""
    return make_grid([result_tiles(result)], tile, columns)


def make_duplicates_montage(groups, tile: int = 160, columns: int = 6) -> np.ndarray:
    """RGB image: one line (or more) per group of duplicates (:class:`cbir.retrieval.keepers.ReviewGroup`),
    exact copies first, the suggested keeper framed and captioned "keep"."""
    rows = []
    for n, group in enumerate(groups, start=1):
        title = f"exact {n}" if group.tier == "exact" else f"near {n} >={group.min_score:.3f}"
        rows.append([
            Tile(c.path, f"{title}  keep" if i == group.keeper else title, _QUERY_FRAME if i == group.keeper else None, c.time)
            for i, c in enumerate(group.files)
        ])
    return make_grid(rows, tile, columns)


def write_montage(result: QueryResult, out_path: str | os.PathLike, tile: int = 192, columns: int = 6) -> Path:
    """Render :func:`make_montage` and write it (atomically) to ``out_path``."""
    return write_image(make_montage(result, tile, columns), out_path)


def write_image(canvas: np.ndarray, out_path: str | os.PathLike) -> Path:
    """Encode an RGB grid by the file's suffix and write it atomically."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in _WRITABLE_SUFFIXES:
        raise UsageError(f"montage file must end in one of {', '.join(_WRITABLE_SUFFIXES)}: {out_path}")
    if not out_path.parent.is_dir():
        raise UsageError(f"folder for the montage does not exist: {out_path.parent}")
    ok, encoded = cv2.imencode(out_path.suffix.lower(), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UsageError(f"cannot encode a montage as {out_path.suffix}")
    try:
        write_bytes_atomic(out_path, encoded.tobytes())
    except OSError as exc:
        raise UsageError(f"cannot write montage {out_path}: {exc.strerror or exc}") from None
    return out_path


def fit_in_square(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` scaled to fit a ``size`` square, aspect ratio kept."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _tile(path: str, size: int, line1: str, line2: str, frame: Sequence[int] | None = None, time_s: float | None = None) -> np.ndarray:
    tile = np.full((size + _CAPTION_HEIGHT, size, 3), _BACKGROUND, dtype=np.uint8)
    try:
        image = read_picture(path, time_s, min_side=size)
    except ImageError:
        image = None
    box = (0, 0, size - 1, size - 1)  # what a frame surrounds: the picture, or the whole crossed square
    if image is not None:
        resized = fit_in_square(image, size - 8)  # room for a 3-pixel frame on every side
        rh, rw = resized.shape[:2]
        top, left = (size - rh) // 2, (size - rw) // 2
        tile[top : top + rh, left : left + rw] = resized
        box = (left - 2, top - 2, left + rw + 1, top + rh + 1)
    else:
        # Gone (or unreadable) since indexing: a crossed, labelled tile, not a blank one.
        tile[:size] = (235, 235, 235)
        cv2.line(tile, (8, 8), (size - 9, size - 9), _MISSING, 2)
        cv2.line(tile, (8, size - 9), (size - 9, 8), _MISSING, 2)
        label = "missing" if not os.path.exists(path) else "unreadable"
        cv2.putText(tile, label, (size // 2 - 34, size // 2 - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, _MISSING, 2, cv2.LINE_AA)
        frame = frame or _MISSING
    if frame is not None:
        cv2.rectangle(tile, box[:2], box[2:], tuple(int(c) for c in frame), 3)
    _text(tile, line1, size + 14, 0.45)
    _text(tile, _shorten(line2, size), size + 29, 0.38)
    return tile


def _text(tile: np.ndarray, text: str, baseline: int, scale: float) -> None:
    cv2.putText(tile, text, (4, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)


def _shorten(text: str, width: int) -> str:
    # Hershey glyphs at scale 0.38 are about 7 px wide; keep the end (the file name).
    limit = max(4, width // 7)
    return text if len(text) <= limit else "~" + text[-(limit - 1) :]
