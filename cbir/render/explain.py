"""Why this match: the query and a verified result side by side, their RANSAC inlier correspondences drawn.

Keypoints are stored normalised by each image's longer side
(:mod:`cbir.features.local`), so they land on any resized copy of the
picture; lines join each inlier pair, as ``cv2.drawMatches`` draws them. A
result that was not verified gets the same panel with no lines and a note
saying so.
"""

from __future__ import annotations

import numpy as np

import cv2

from cbir.errors import ImageError
from cbir.images.video import read_picture
from cbir.render.montage import fit_in_square, make_montage, write_image

_LINE = (30, 170, 60)
_NOTE = (150, 40, 40)
_BACKGROUND = (255, 255, 255)
_CAPTION = 22
#: At most this many correspondences are drawn (evenly chosen): more only hide the pictures.
MAX_LINES = 40


def explanation_caption(match) -> str:
    """One line: how the match was checked."""
    if match.inliers is None:
        return f"#{match.rank} not checked (no --verify)"
    if match.verified:
        return f"#{match.rank} verified: {match.inliers} inliers"
    return f"#{match.rank} not verified ({match.inliers} inliers)"


def explanation_panel(query_path: str, match, side: int = 192) -> np.ndarray:
    """RGB ``(side + caption, 2 * side)``: query left, match right, inlier correspondences as lines."""
    panel = np.full((side + _CAPTION, 2 * side, 3), _BACKGROUND, np.uint8)
    placed = [_place(panel, path, side, offset, time_s) for path, offset, time_s in ((query_path, 0, None), (match.path, side, match.time))]
    if match.correspondences is not None and all(p is not None for p in placed):
        (q_origin, q_scale), (m_origin, m_scale) = placed
        query_xy, match_xy = (np.asarray(a) for a in match.correspondences)
        shown = np.linspace(0, len(query_xy) - 1, min(len(query_xy), MAX_LINES)).astype(int) if len(query_xy) else []
        for (qx, qy), (mx, my) in zip(query_xy[shown], match_xy[shown]):
            a = (int(round(q_origin[0] + qx * q_scale)), int(round(q_origin[1] + qy * q_scale)))
            b = (int(round(m_origin[0] + mx * m_scale)), int(round(m_origin[1] + my * m_scale)))
            cv2.line(panel, a, b, _LINE, 1, cv2.LINE_AA)
            cv2.circle(panel, a, 2, _LINE, -1, cv2.LINE_AA)
            cv2.circle(panel, b, 2, _LINE, -1, cv2.LINE_AA)
    colour = (20, 20, 20) if match.verified else _NOTE
    cv2.putText(panel, explanation_caption(match), (4, side + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return panel


def _place(panel: np.ndarray, path: str, side: int, offset: int, time_s: float | None = None) -> tuple[tuple[int, int], float] | None:
    """Draw ``path`` (a video: its frame at ``time_s``) fitted into its square; ``(top-left corner, pixels per
    unit of the longer side)``."""
    try:
        image = read_picture(path, time_s, min_side=side)
    except ImageError:
        cv2.putText(panel, "unreadable", (offset + 8, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _NOTE, 1, cv2.LINE_AA)
        return None
    resized = fit_in_square(image, side - 4)
    h, w = resized.shape[:2]
    top, left = (side - h) // 2, offset + (side - w) // 2
    panel[top : top + h, left : left + w] = resized
    return (left, top), float(max(h, w))


def explanation_grid(query_path: str, matches, side: int = 192, columns: int = 3) -> np.ndarray:
    """One panel per match, ``columns`` panels a line."""
    panels = [explanation_panel(query_path, m, side) for m in matches]
    if not panels:
        return np.full((1, 2 * side, 3), _BACKGROUND, np.uint8)
    height, width = panels[0].shape[:2]
    lines = -(-len(panels) // columns)
    canvas = np.full((lines * height, min(columns, len(panels)) * width, 3), _BACKGROUND, np.uint8)
    for n, panel in enumerate(panels):
        r, c = divmod(n, columns)
        canvas[r * height : (r + 1) * height, c * width : (c + 1) * width] = panel
    return canvas


def make_explained_montage(result, tile: int = 192, columns: int = 6) -> np.ndarray:
    """:func:`cbir.render.montage.make_montage`, then each match beside the query with its inliers drawn."""
    grid = make_montage(result, tile, columns)
    panels = explanation_grid(result.query, result.results, tile, max(1, columns // 2))
    width = max(grid.shape[1], panels.shape[1])
    pad = lambda image: np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    return np.concatenate([pad(grid), pad(panels)])


def write_explained_montage(result, out_path, tile: int = 192, columns: int = 6):
    """Render :func:`make_explained_montage` and write it (atomically) to ``out_path``."""
    return write_image(make_explained_montage(result, tile, columns), out_path)
