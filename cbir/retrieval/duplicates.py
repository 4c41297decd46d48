"""Near-duplicate groups: pairs above a similarity threshold, joined into connected components.

Pairs come from FAISS range search (or a k-nearest-neighbour search where the
index type has no range search), block by block over the stored vectors, so
memory grows with the number of similar pairs, never with N x N.

A video is one member of a group however many of its frames are in it (the
earliest shown), and two frames of one video are never a pair: its
consecutive frames are alike by nature, not duplicates of each other.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from cbir.ann.vectors import VectorIndex
from cbir.display import display_path
from cbir.images.video import describe_frame
from cbir.errors import UsageError
from cbir.progress import SILENT, Progress
from cbir.retrieval.search import Searcher
from cbir.store.catalogue import ImageFilter
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path

#: Neighbours examined per image when the index type cannot range-search.
KNN_FALLBACK = 32
#: What FAISS says of an index type without range search (faiss/Index.cpp).
RANGE_SEARCH_MISSING = "range search not implemented"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DuplicateGroup:
    """Images connected by similarities at or above the threshold."""

    paths: list[str]
    min_score: float
    #: Per path: the time in seconds of the video frame in the group, ``None`` for a photo (``None``: all photos).
    times: list[float | None] | None = None

    def time_of(self, n: int) -> float | None:
        return self.times[n] if self.times is not None else None

    def names(self) -> list[str]:
        """Each member as shown: its path, ``clip.mp4 @ 01:23`` for a video."""
        return [describe_frame(p, self.time_of(n)) for n, p in enumerate(self.paths)]

    def to_dict(self) -> dict:
        out = {"size": len(self.paths), "min_score": self.min_score, "paths": [display_path(p, controls=False) for p in self.paths]}
        if self.times is not None and any(t is not None for t in self.times):  # photos' JSON stays as it was
            out["times"] = list(self.times)
        return out


def find_duplicates(
    name: str,
    threshold: float = 0.95,
    index_dir: str | os.PathLike | None = None,
    block_size: int = 1024,
    progress: Progress = SILENT,
    image_filter: ImageFilter | None = None,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate images in the index ``name``, largest first.

    Parameters
    ----------
    threshold : float
        Cosine similarity, in [-1, 1], at or above which two images are
        near-duplicates; groups are the connected components of such pairs.
        ``min_score`` of a group is the lowest similarity among its linked pairs.
    image_filter : ImageFilter, optional
        Only images it lets through (a folder, a label) are compared, with each other.
    """
    if not -1.0 <= threshold <= 1.0:
        raise UsageError(f"threshold {threshold} is outside the range of cosine similarity, [-1, 1]")
    store = IndexStore.open(index_path(name, index_dir))
    try:
        # Rows, stored vectors and the FAISS index from one committed state: a
        # writer committing meanwhile cannot make them disagree.
        with store.catalogue.snapshot():
            searcher = Searcher(store)
            groups = _groups(searcher, threshold, block_size, progress, image_filter)
    finally:
        store.close()
    groups.sort(key=lambda g: (-len(g.paths), g.paths[0]))
    return groups


def _groups(searcher: Searcher, threshold: float, block_size: int, progress: Progress, image_filter=None) -> list[DuplicateGroup]:
    # DBA moved the indexed vectors: compare the original ones
    vectors_index = searcher.plain_vectors() if searcher.augmented else searcher.vectors
    rows = [row for row in searcher.image_rows() if image_filter is None or image_filter.matches(row)]
    ids = np.array([row.id for row in rows], dtype=np.int64)
    video_of = _video_numbers(rows)
    parent = np.arange(len(ids))
    weakest = np.full(len(ids), np.inf)
    progress.start("comparing images", len(ids))
    try:
        for block, (block_ids, vectors) in enumerate(searcher.iter_original_vectors(block_size)):
            if image_filter is not None:
                kept = np.isin(block_ids, ids)
                block_ids, vectors = block_ids[kept], vectors[kept]
                if not len(block_ids):
                    continue
            queries, neighbours, scores = _pairs(vectors_index, block_ids, vectors, threshold, warn=block == 0)
            a = np.searchsorted(ids, queries)
            b = np.searchsorted(ids, neighbours)
            known = (b < len(ids)) & (ids[np.minimum(b, len(ids) - 1)] == neighbours) & (a != b)
            if video_of is not None:  # two frames of one video are no pair
                known &= (video_of[a] < 0) | (video_of[a] != video_of[np.minimum(b, len(ids) - 1)])
            for i, j, score in zip(a[known], b[known], scores[known]):
                _union(parent, weakest, int(i), int(j), float(score))
            progress.advance(len(block_ids))
    finally:
        progress.stop()
    roots = np.array([_find(parent, i) for i in range(len(ids))])
    groups = []
    for root in np.unique(roots):
        members = np.flatnonzero(roots == root)
        if len(members) > 1:
            group = _one_member_per_file([rows[m] for m in members], round(float(weakest[root]), 6))
            if len(group.paths) > 1:
                groups.append(group)
    return groups


def _video_numbers(rows) -> np.ndarray | None:
    """Per row: a number shared by the frames of one video, -1 for a photo; ``None`` where there is no video."""
    if all(row.time is None for row in rows):
        return None
    numbers: dict[str, int] = {}
    return np.array([-1 if row.time is None else numbers.setdefault(row.path, len(numbers)) for row in rows], dtype=np.int64)


def _one_member_per_file(members, min_score: float) -> DuplicateGroup:
    """A group's rows, each file once (a video at its earliest frame in the group), sorted by path."""
    first: dict[str, float | None] = {}
    for row in sorted(members, key=lambda row: (row.path, -1.0 if row.time is None else row.time)):
        first.setdefault(row.path, row.time)
    paths = sorted(first)
    times = [first[p] for p in paths]
    return DuplicateGroup(paths, min_score, times if any(t is not None for t in times) else None)


def _pairs(vectors_index: VectorIndex, block_ids: np.ndarray, vectors: np.ndarray, threshold: float, warn: bool = True):
    """``(query ids, neighbour ids, scores)`` of all pairs with score >= threshold.

    An index type without range search (FAISS says so; e.g. ``PQ32x4fs``,
    ``NSG32``) is searched for the :data:`KNN_FALLBACK` nearest neighbours of
    each image instead, with a warning (where ``warn``): larger groups may be cut. Any other
    FAISS error is an error.
    """
    index = vectors_index.index
    try:
        # FAISS range search keeps scores strictly above its radius.
        limits, scores, neighbours = index.range_search(vectors, float(np.nextafter(threshold, -np.inf)))
        queries = np.repeat(block_ids, np.diff(limits).astype(np.int64))
    except RuntimeError as exc:
        if RANGE_SEARCH_MISSING not in str(exc):
            raise
        k = min(KNN_FALLBACK, vectors_index.ntotal)
        if warn:
            logger.warning(
                "index type %s has no range search: comparing each image with its %d nearest neighbours only, "
                "so a larger group of duplicates may be missed or split (an index built with --index-type flat "
                "or hnsw finds them all)",
                vectors_index.factory,
                k,
            )
        scores, neighbours = vectors_index.search(vectors, k)
        queries = np.repeat(block_ids, k)
        scores, neighbours = scores.ravel(), neighbours.ravel()
    keep = (scores >= threshold) & (neighbours >= 0)
    return queries[keep], neighbours[keep], scores[keep]


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: np.ndarray, weakest: np.ndarray, i: int, j: int, score: float) -> None:
    root_i, root_j = _find(parent, i), _find(parent, j)
    if root_i != root_j:
        parent[root_j] = root_i
    weakest[root_i] = min(weakest[root_i], weakest[root_j], score)
