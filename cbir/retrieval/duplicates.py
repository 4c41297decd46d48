"""Duplicate groups in two tiers: byte-identical copies, and near-duplicates above a similarity threshold.

The **exact** tier groups files by content hash (the catalogue's SHA-256): the
same bytes under several names. The **near** tier joins pairs of images at or
above a cosine similarity into connected components; each set of exact copies
takes part in it once, through its suggested keeper, so a near group lists
different pictures, never two names of one file.

Pairs come from FAISS range search (or a k-nearest-neighbour search where the
index type has no range search), block by block over the stored vectors, so
memory grows with the number of similar pairs, never with N x N.

The default threshold depends on the extractor (:mod:`cbir.retrieval.thresholds`):
the same number means very different things for a colour histogram and a CNN.
Each was measured by ``benchmarks/duplicates.py``: re-encoded, resized and
cropped copies of the Corel-1k photos against all pairs of distinct photos.
Every group comes with a suggested keeper and its reason (:mod:`cbir.retrieval.keepers`).

A video takes part in the exact tier only (as one file, however many frames
it has): a frame alike to a photo does not make the video a duplicate of the
photo, nor one alike frame two videos duplicates of each other, so a video is
never left out of what is kept because one of its frames resembles something.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from cbir.ann.vectors import VectorIndex
from cbir.errors import UsageError
from cbir.progress import SILENT, Progress
from cbir.retrieval.keepers import Candidate, ReviewGroup, files_not_kept
from cbir.retrieval.search import Searcher
from cbir.retrieval.thresholds import default_threshold
from cbir.store.catalogue import ImageFilter, ImageRow
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path

#: Neighbours examined per image when the index type cannot range-search.
KNN_FALLBACK = 32
#: What FAISS says of an index type without range search (faiss/Index.cpp).
RANGE_SEARCH_MISSING = "range search not implemented"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Duplicates:
    """What :func:`find_duplicates` found: both tiers, and the threshold the near tier used."""

    exact: list[ReviewGroup]
    near: list[ReviewGroup]
    #: ``None`` when only the exact tier was asked for.
    threshold: float | None
    #: Where the threshold came from: ``"given"`` or ``"default for <extractor>"``.
    threshold_source: str

    @property
    def groups(self) -> list[ReviewGroup]:
        return [*self.exact, *self.near]

    # A sequence of all groups, exact first, as find_duplicates returned before it had tiers.
    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.exact) + len(self.near)

    def __getitem__(self, position: int) -> ReviewGroup:
        return self.groups[position]

    def not_kept(self) -> list[str]:
        """The files the suggested keepers leave out (:func:`cbir.retrieval.keepers.files_not_kept`)."""
        return files_not_kept(self.groups)


def find_duplicates(
    name: str,
    threshold: float | None = None,
    index_dir: str | os.PathLike | None = None,
    block_size: int = 1024,
    progress: Progress = SILENT,
    image_filter: ImageFilter | None = None,
    near: bool = True,
) -> Duplicates:
    """Exact copies and groups of near-duplicate images in the index ``name``, largest groups first.

    Parameters
    ----------
    threshold : float, optional
        Cosine similarity, in [-1, 1], at or above which two images are
        near-duplicates; groups are the connected components of such pairs.
        ``min_score`` of a group is the lowest similarity among its linked pairs.
        Default: the extractor's measured default (:func:`default_threshold`).
    image_filter : ImageFilter, optional
        Only images it lets through (a folder, a label) are compared, with each other.
    near : bool
        ``False``: the exact tier only (no similarity search).
    """
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise UsageError(f"threshold {threshold} is outside the range of cosine similarity, [-1, 1]")
    store = IndexStore.open(index_path(name, index_dir))
    try:
        if threshold is None:
            threshold, source = default_threshold(store.manifest)
        else:
            source = "given"
        # Rows, stored vectors and the FAISS index from one committed state: a
        # writer committing meanwhile cannot make them disagree.
        with store.catalogue.snapshot():
            searcher = Searcher(store)
            allowed = searcher.ids_matching(image_filter)  # the catalogue's SQL: dates and cameras need its metadata
            rows = searcher.image_rows() if allowed is None else searcher.image_rows(allowed)
            candidates = _candidates(searcher, rows)
            exact, representatives = _exact_groups(rows, candidates)
            # Stills only: a video is a different medium, never a near duplicate (module docstring).
            representatives = [row for row in representatives if row.time is None]
            near_groups = _near_groups(searcher, representatives, candidates, threshold, block_size, progress) if near else []
    finally:
        store.close()
    order = lambda g: (-len(g.files), g.files[0].path)  # noqa: E731
    return Duplicates(sorted(exact, key=order), sorted(near_groups, key=order), threshold if near else None, source if near else "")


@dataclass(frozen=True)
class ReviewedGroup:
    """A group as a person's review sends it back: its tier, its files' ids, the one to keep."""

    tier: str
    ids: tuple[int, ...]
    keep: int
    min_score: float = 1.0


def reviewed_groups(searcher: Searcher, reviewed: list[ReviewedGroup]) -> list[ReviewGroup]:
    """The review's groups rebuilt from the catalogue: each file's facts from the index, the
    suggested keeper's reason where the person kept it, :data:`~cbir.retrieval.keepers.CHOSEN_BY_PERSON` otherwise.

    :class:`~cbir.errors.UsageError` for a group that is not one (an unknown tier, fewer
    than two files, a keeper outside it); :class:`~cbir.errors.NotInIndexError` for an id the index lacks.
    """
    from cbir.errors import NotInIndexError

    for n, group in enumerate(reviewed, start=1):
        if group.tier not in ("exact", "near"):
            raise UsageError(f"group {n}: tier is 'exact' or 'near', got {group.tier!r}")
        if len(set(group.ids)) != len(group.ids) or len(group.ids) < 2:
            raise UsageError(f"group {n}: a group has two or more different image ids")
        if group.keep not in group.ids:
            raise UsageError(f"group {n}: the image to keep ({group.keep}) is not one of its ids")
    wanted = sorted({i for group in reviewed for i in group.ids})
    rows = searcher.image_rows(wanted)
    if len(rows) != len(wanted):
        missing = sorted(set(wanted) - {row.id for row in rows})
        raise NotInIndexError(f"index {searcher.name!r} holds no image with id {missing[0]}")
    candidates = _candidates(searcher, rows)
    return [
        ReviewGroup.suggested(group.tier, [candidates[i] for i in group.ids], group.min_score).keeping(group.keep)
        for group in reviewed
    ]


def _candidates(searcher: Searcher, rows: list[ImageRow]) -> dict[int, Candidate]:
    metadata = searcher.image_metadata([row.id for row in rows])
    return {
        row.id: Candidate(
            row.id, row.path, row.size, row.mtime_ns, getattr(metadata.get(row.id), "width", None),
            getattr(metadata.get(row.id), "height", None), row.sha256, row.time,
        )
        for row in rows
    }


def _exact_groups(rows: list[ImageRow], candidates: dict[int, Candidate]) -> tuple[list[ReviewGroup], list[ImageRow]]:
    """Groups of rows with one content hash, and the rows that take part in the near tier (one per content)."""
    by_hash: dict[str, dict[str, list[ImageRow]]] = {}  # hash -> file -> its rows (a video: its frames)
    for row in rows:
        by_hash.setdefault(row.sha256, {}).setdefault(row.path, []).append(row)
    groups, representatives = [], []
    for files in by_hash.values():
        if len(files) == 1:
            representatives.extend(*files.values())
            continue
        group = ReviewGroup.suggested("exact", [candidates[_earliest(same).id] for same in files.values()])
        groups.append(group)
        representatives.extend(files[group.kept.path])
    representatives.sort(key=lambda row: row.id)
    return groups, representatives


def _near_groups(
    searcher: Searcher, rows: list[ImageRow], candidates: dict[int, Candidate], threshold: float, block_size: int, progress: Progress
) -> list[ReviewGroup]:
    # DBA moved the indexed vectors: compare the original ones
    vectors_index = searcher.plain_vectors() if searcher.augmented else searcher.vectors
    ids = np.array([row.id for row in rows], dtype=np.int64)
    parent = np.arange(len(ids))
    weakest = np.full(len(ids), np.inf)
    progress.start("comparing images", len(ids))
    try:
        for block, (block_ids, vectors) in enumerate(searcher.iter_original_vectors(block_size)):
            kept = np.isin(block_ids, ids)  # outside the filter, or an exact copy of a representative
            block_ids, vectors = block_ids[kept], vectors[kept]
            if not len(block_ids):
                continue
            queries, neighbours, scores = _pairs(vectors_index, block_ids, vectors, threshold, warn=block == 0)
            a = np.searchsorted(ids, queries)
            b = np.searchsorted(ids, neighbours)
            known = (b < len(ids)) & (ids[np.minimum(b, len(ids) - 1)] == neighbours) & (a != b)
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
            by_file: dict[str, list[ImageRow]] = {}
            for m in members:
                by_file.setdefault(rows[m].path, []).append(rows[m])
            if len(by_file) > 1:  # a video's frames alone are no group
                files = [candidates[_earliest(same).id] for same in by_file.values()]
                groups.append(ReviewGroup.suggested("near", files, round(float(weakest[root]), 6)))
    return groups


def _earliest(rows: list[ImageRow]) -> ImageRow:
    """A file's row in a group: a photo's one, a video's earliest frame."""
    return min(rows, key=lambda row: -1.0 if row.time is None else row.time)


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
