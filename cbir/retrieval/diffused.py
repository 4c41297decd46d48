"""Diffusion re-ranking of an open index (``--diffusion K``): its kNN graph, and rankings by diffused similarity.

The maths is :mod:`cbir.ann.diffusion`'s. The graph is built when a
searcher first diffuses, from the vectors the index searches (the
DBA-augmented ones under DBA), exactly below
:data:`cbir.ann.approximate.APPROXIMATE_FROM` images and approximately above;
it is not stored, so it is refused above :data:`MAX_IMAGES` (the build grows
with the square of the collection). A ranking is the images reached by
diffusion, best first, then every other one by plain similarity; scores
stay the similarities to the (expanded) query, as with ``--verify``.
"""

from __future__ import annotations

import numpy as np

from cbir.ann.diffusion import DEFAULT_QUERY_K, diffuse, knn_graph, query_seeds
from cbir.ann.rerank import search_nearest_neighbours
from cbir.errors import UsageError

#: The graph is built in memory at the first diffused search: at most this many images.
MAX_IMAGES = 20_000


def check_diffusion(k) -> int | None:
    """``k`` checked: ``None`` (off) or the graph's neighbours a vector, from 2."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"diffusion must be an integer number of neighbours, got {type(k).__name__}")
    if k < 2:
        raise UsageError(f"--diffusion (the graph's neighbours a vector) must be at least 2, got {k}")
    return int(k)


class DiffusionGraph:
    """The kNN graph of ``vectors`` (rows of catalogue ``ids``, ascending) and rankings on it."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, k: int, name: str = "index"):
        if len(ids) > MAX_IMAGES:
            raise UsageError(
                f"--diffusion builds its graph in memory when the index opens: {name!r} holds {len(ids):,} images, "
                f"more than {MAX_IMAGES:,}; search it without --diffusion"
            )
        self.ids = np.asarray(ids, np.int64)
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        k = min(k, len(ids) - 1)
        self.graph = knn_graph(*search_nearest_neighbours(self.vectors, k)) if k >= 1 else None

    def rank(
        self, queries: np.ndarray, seed_scores: np.ndarray, seed_ids: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of the ``n`` best images per query by diffusion from its seeds (ids, -1 padding).

        ``allowed`` (catalogue ids) restricts the ranking, as a filter does.
        """
        rows = np.searchsorted(self.ids, seed_ids).clip(0, max(len(self.ids) - 1, 0))
        rows = np.where((seed_ids >= 0) & (self.ids[rows] == seed_ids), rows, -1)
        plain = np.asarray(queries, np.float32) @ self.vectors.T  # (m, images)
        if self.graph is not None:
            diffused = diffuse(self.graph, query_seeds(rows[:, :DEFAULT_QUERY_K], seed_scores[:, :DEFAULT_QUERY_K], len(self.ids))).T
        else:
            diffused = np.zeros_like(plain)
        # Reached images first (by diffused score), then the rest by plain similarity.
        peak = np.maximum(diffused.max(axis=1, keepdims=True), 1e-300)
        key = np.where(diffused > 1e-12 * peak, 2.0 + diffused / peak, plain)
        # The best plain match stays first (seeds come by similarity): an indexed copy of the query
        # comes back first, as without diffusion; diffusion orders what follows.
        first = rows[:, 0] if rows.shape[1] else np.full(len(rows), -1)
        key[np.flatnonzero(first >= 0), first[first >= 0]] = 4.0
        if allowed is not None:
            key = np.where(np.isin(self.ids, allowed)[None, :], key, -np.inf)
        n = min(n, len(self.ids))
        order = np.argsort(-key, axis=1, kind="stable")[:, :n]
        ids = np.where(np.isfinite(np.take_along_axis(key, order, axis=1)), self.ids[order], -1)
        return np.take_along_axis(plain, order, axis=1).astype(np.float32), ids
