"""Similarity search restricted to the images an :class:`~cbir.store.catalogue.ImageFilter` lets through.

FAISS searches with an ``IDSelector`` over the matching catalogue ids: exact
on a flat index. A graph walk (HNSW) or the probed lists (IVF) can hold fewer
than ``k`` matching images when the filter is selective; those queries are
then answered exactly over the matching vectors, so every index type returns
``k`` results whenever ``k`` images match (docs/filters.md has the figures:
how often that happens, and why over-fetching was not chosen).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import faiss
import numpy as np

from cbir.ann.vectors import FilterUnsupported, VectorIndex
from cbir.store.catalogue import ImageFilter

#: Matching vectors kept in memory for exact fallbacks, per filter (bytes).
CACHED_SUBSET_BYTES = 32 << 20


class AllowedIds:
    """The ids one filter lets through (ascending), and a FAISS selector over them."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        # A hash set with a Bloom filter in front: one lookup per candidate FAISS visits.
        self.selector = faiss.IDSelectorBatch(self.ids) if len(self.ids) else None
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def vectors(self, stored_vectors: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The matching images' searched vectors, in :attr:`ids` order (kept when small)."""
        if self._vectors is not None:
            return self._vectors
        vectors = stored_vectors(self.ids)
        if vectors.nbytes <= CACHED_SUBSET_BYTES:
            with self._lock:
                self._vectors = vectors
        return vectors


class AllowedCache:
    """The last few filters' :class:`AllowedIds` of one open index (an index reopened starts afresh)."""

    def __init__(self, ids_matching: Callable[[ImageFilter], np.ndarray], size: int = 32):
        self._ids_matching = ids_matching
        self._size = size
        self._entries: OrderedDict[ImageFilter, AllowedIds] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image_filter: ImageFilter | None) -> AllowedIds | None:
        if image_filter is None or image_filter.is_empty:
            return None
        with self._lock:
            found = self._entries.get(image_filter)
            if found is not None:
                self._entries.move_to_end(image_filter)
                return found
        allowed = AllowedIds(self._ids_matching(image_filter))
        with self._lock:
            self._entries[image_filter] = allowed
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return allowed


def filtered_search(
    vector_index: VectorIndex,
    queries: np.ndarray,
    n: int,
    allowed: AllowedIds,
    stored_vectors: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the best ``min(n, len(allowed))`` allowed images per query, best first."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    want = min(n, len(allowed))
    scores = np.full((len(queries), want), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), want), -1, dtype=np.int64)
    if want == 0:
        return scores, ids
    short = np.ones(len(queries), dtype=bool)
    try:
        found_scores, found_ids = vector_index.search(queries, want, allowed.selector)
        width = min(want, found_ids.shape[1])
        scores[:, :width], ids[:, :width] = found_scores[:, :width], found_ids[:, :width]
        short = (ids >= 0).sum(axis=1) < want
    except FilterUnsupported:
        pass  # every query answered exactly below
    if short.any():
        scores[short], ids[short] = _exact(queries[short], want, allowed, stored_vectors)
    return scores, ids


def _exact(queries: np.ndarray, want: int, allowed: AllowedIds, stored_vectors) -> tuple[np.ndarray, np.ndarray]:
    similarities = queries @ allowed.vectors(stored_vectors).T
    if want < similarities.shape[1]:
        top = np.argpartition(-similarities, want - 1, axis=1)[:, :want]
    else:
        top = np.broadcast_to(np.arange(similarities.shape[1]), similarities.shape).copy()
    top_scores = np.take_along_axis(similarities, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), allowed.ids[np.take_along_axis(top, order, axis=1)]
