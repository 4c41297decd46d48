"""Approximate nearest neighbours for DBA: FAISS IVF over a PCA projection, candidates re-scored exactly.

DBA needs every vector's ``k`` nearest other vectors. Exact search
(:func:`cbir.ann.rerank.nearest_neighbours`) compares every pair, so it
grows with the square of the collection; this search grows about as
``n * sqrt(n)`` with a small constant:

1. a PCA projection to :data:`PROJECTED_DIM` dimensions, fitted on a sample
   (uncentred: it keeps inner products, not distances to the mean);
2. an IVF index (FAISS ``IndexIVFFlat``, inner product) over the projected
   vectors: the only copy made, ``PROJECTED_DIM / d`` of the vectors' size;
3. each query's best :func:`candidate_count` rows in the projection, then
   re-scored exactly against the original vectors (in blocks): the scores
   returned are the true inner products, only the choice of rows is
   approximate.

:func:`search_rule` is the one place that says when this runs instead of
exact search, and with which ``nlist`` and ``nprobe``; the figures behind it
are in docs/rerank.md ("DBA at scale"). Deterministic for a given input (a
fixed sample, FAISS's k-means seed), so a run resumed after a kill builds
the same neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
from faiss.contrib import ivf_tools
import numpy as np

#: Exact search while ``q * v / (q + v)`` (``q`` queries against ``v``
#: vectors) is below half this; a first build (``q = v = n``) goes
#: approximate from ``n = APPROXIMATE_FROM``. Measured where the two cost the
#: same on 2 cores (docs/rerank.md). Module-level so a benchmark or a test can
#: force the approximate path on a small collection.
APPROXIMATE_FROM = 20_000

#: Dimensions searched by the IVF index (vectors with fewer are not projected).
PROJECTED_DIM = 128

#: Rows and bytes bounding the work on one block of queries (the candidates' gather).
_BLOCK_BYTES = 16 << 20
_SAMPLE = 10_000
_POINTS_PER_LIST = 39  # FAISS's own minimum of training points per centroid, for nlist
_TRAINING_POINTS_PER_LIST = 16
_SEARCH_ROWS = 8192  # queries per FAISS call (smaller calls cost more in overhead)


@dataclass(frozen=True)
class SearchRule:
    """How the neighbours of ``queries`` among ``vectors`` are found."""

    approximate: bool
    nlist: int = 0
    nprobe: int = 0
    candidates: int = 0


def search_rule(n_queries: int, n_vectors: int, k: int) -> SearchRule:
    """Exact below the threshold (:data:`APPROXIMATE_FROM`); above it IVF, as :func:`approximate_rule`."""
    pairs_per_vector = n_queries * n_vectors / max(1, n_queries + n_vectors)
    if 2 * pairs_per_vector < APPROXIMATE_FROM or n_vectors <= k + 1:
        return SearchRule(approximate=False)
    return approximate_rule(n_vectors, k)


def approximate_rule(n_vectors: int, k: int) -> SearchRule:
    """IVF over ``n_vectors``: ``nlist ~ 4 sqrt(n)`` lists, ``nprobe ~ nlist / 64`` of them (at least 16)."""
    nlist = max(1, min(2 ** round(math.log2(4 * math.sqrt(max(n_vectors, 1)))), n_vectors // _POINTS_PER_LIST))
    nprobe = min(nlist, 16)
    return SearchRule(True, nlist, nprobe, candidate_count(k))


def candidate_count(k: int) -> int:
    """Rows taken from the projection per query and re-scored exactly."""
    return 4 * k + 16


def approximate_top_k(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    own_rows: np.ndarray | None = None,
    rule: SearchRule | None = None,
    report: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` rows of ``vectors`` for each query by inner product, as :func:`cbir.ann.rerank.top_k` returns them.

    ``own_rows[i]`` (optional, -1 for none) is never among query ``i``'s
    results. ``rule`` defaults to :func:`search_rule`'s approximate one for
    these sizes. ``report`` gets the fraction done after each block.
    """
    queries = np.asarray(queries, dtype=np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    if rule is None or not rule.approximate:
        rule = approximate_rule(len(vectors), k)
    projection = _projection(vectors)
    index, probes = _ivf_index(vectors, projection, rule, probe_self=queries is vectors)
    taken = min(rule.candidates + (own_rows is not None), len(vectors))
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    own = None if own_rows is None else np.asarray(own_rows, dtype=np.int64)
    step = max(1, _BLOCK_BYTES // (4 * taken * vectors.shape[1]))  # rows re-scored at once
    threads = max(1, faiss.omp_get_max_threads())

    def rescore(start: int, candidates: np.ndarray) -> None:
        stop = start + len(candidates)
        rows[start:stop], scores[start:stop] = _rescore(queries[start:stop], vectors, candidates, k)

    with ThreadPoolExecutor(threads) as pool:  # the gather and products release the GIL
        for start in range(0, len(queries), _SEARCH_ROWS):
            stop = min(start + _SEARCH_ROWS, len(queries))
            projected = _project(queries[start:stop], projection)
            if probes is None:
                _, candidates = index.search(projected, taken)
            else:  # a collection against itself: its lists were found when it was added
                _, candidates = ivf_tools.search_preassigned(index, projected, taken, probes[start:stop].astype(np.int64))
            if own is not None:
                candidates[candidates == own[start:stop, None]] = -1
            list(pool.map(rescore, range(start, stop, step), [candidates[i : i + step] for i in range(0, stop - start, step)]))
            if report is not None:
                report(stop / len(queries))
    return rows, scores


def _rescore(block: np.ndarray, vectors: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidates by their exact inner products (-1 candidates never win)."""
    valid = candidates >= 0
    gathered = vectors[np.where(valid, candidates, 0)]  # (m, c, d): the only gather, bounded by the block
    exact = np.matmul(gathered, block[:, :, None])[:, :, 0]
    exact = np.where(valid, exact, -np.inf).astype(np.float32)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    rows, scores = np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)
    rows[~np.isfinite(scores)] = -1
    if rows.shape[1] < k:  # fewer candidates than k: pad as top_k does
        pad = k - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return rows, scores


def _sample_rows(n: int, size: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))


def _projection(vectors: np.ndarray) -> np.ndarray | None:
    """``(d, PROJECTED_DIM)`` top eigenvectors of the sample's second moment, or ``None`` for small ``d``."""
    d = vectors.shape[1]
    if d <= PROJECTED_DIM:
        return None
    sample = vectors[_sample_rows(len(vectors), _SAMPLE)]
    gram = sample.T @ sample
    # A few steps of subspace iteration, not a full eigh of the d x d matrix
    # (2 s at d = 1440): the basis only ranks candidates, exact scores decide.
    basis = np.random.default_rng(0).standard_normal((d, PROJECTED_DIM + 32)).astype(np.float32)
    for _ in range(3):
        basis = np.linalg.qr(gram @ basis)[0]
    _values, small = np.linalg.eigh(basis.T @ gram @ basis)
    return np.ascontiguousarray(basis @ small[:, ::-1][:, :PROJECTED_DIM], dtype=np.float32)


def _project(rows: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(rows if projection is None else rows @ projection, dtype=np.float32)


def _ivf_index(vectors: np.ndarray, projection: np.ndarray | None, rule: SearchRule, probe_self: bool):
    """IVF (inner product) over the projected ``vectors``, trained on a fixed sample, filled in blocks.

    With ``probe_self``, also each vector's ``nprobe`` nearest lists (int32),
    found once for adding it and kept for searching with it.
    """
    dim = vectors.shape[1] if projection is None else projection.shape[1]
    nlist = max(1, min(rule.nlist, len(vectors)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(rule.nprobe, nlist)
    index.cp.seed = 1234  # FAISS's default, said: the same lists on a rerun
    # A coarse partition is enough (nprobe lists and exact re-scoring do the
    # rest): few k-means rounds on few points, the training's cost ~ n, not n^1.5.
    index.cp.niter = 10
    index.cp.min_points_per_centroid = _TRAINING_POINTS_PER_LIST
    index.train(_project(vectors[_sample_rows(len(vectors), max(nlist * _TRAINING_POINTS_PER_LIST, 1000))], projection))
    probes = np.empty((len(vectors), index.nprobe), np.int32) if probe_self else None
    step = max(1, _BLOCK_BYTES // (4 * vectors.shape[1]))
    for start in range(0, len(vectors), step):
        block = _project(vectors[start : start + step], projection)
        if probes is None:
            index.add(block)
            continue
        _, lists = index.quantizer.search(block, index.nprobe)
        probes[start : start + len(block)] = lists
        ivf_tools.add_preassigned(index, block, np.ascontiguousarray(lists[:, 0]))
    return index, probes
