"""Re-ranking by neighbourhood averaging: alpha query expansion (αQE) and database-side augmentation (DBA).

Both replace a vector by a weighted mean of itself and its nearest
neighbours, then L2-normalise (Radenović, Tolias and Chum, "Fine-tuning CNN
image retrieval with no human annotation", TPAMI 2019):

* **αQE** (query side, at search time): the query ``q`` and its top ``n``
  results ``x_1..x_n`` with cosine scores ``s_i`` give
  ``q' = normalise(q + sum_i max(s_i, 0)^alpha * x_i)``, searched again.
* **DBA** (database side, once per change of the collection): every database
  vector ``x`` with its top ``k`` *other* vectors ``x_j`` (scores ``s_j``)
  becomes ``x' = normalise(x + sum_j max(s_j, 0)^alpha * x_j)``.

``alpha = 0`` weighs every neighbour as much as the vector itself (the plain
average of Arandjelović and Zisserman's DBA and Chum's average QE); a
larger ``alpha`` trusts close neighbours more than far ones.

Pure numpy: functions over arrays, no index, no files. The stored-index side
lives in :mod:`cbir.store.dba`; the search side in :mod:`cbir.retrieval.search`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cbir.ann.approximate import approximate_top_k, search_rule
from cbir.errors import UsageError

#: Defaults, measured on Corel-1k, an instance-level set (4 augmented copies
#: per photo) and Fashion-MNIST with MobileNet and colour features
#: (``benchmarks/rerank.py``; docs/rerank.md): light settings help all three.
DEFAULT_ALPHA = 3.0
DEFAULT_EXPAND = 2
DEFAULT_DBA = 2


def check_expand(n: int | None) -> None:
    """Refuse a query-expansion depth below 1 (``None`` means off)."""
    if n is not None and (isinstance(n, bool) or int(n) < 1):
        raise UsageError(f"--expand must be at least 1 (use no --expand to turn query expansion off), got {n}")


def check_alpha(alpha: float) -> None:
    if not np.isfinite(alpha) or alpha < 0:
        raise UsageError(f"--alpha must be a finite number >= 0, got {alpha}")


def neighbour_weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    """``max(score, 0) ** alpha``: the weight of each neighbour in the mean (0 ** 0 = 1 kept for alpha 0)."""
    scores = np.clip(np.asarray(scores, dtype=np.float32), 0.0, None)
    return np.ones_like(scores) if alpha == 0 else scores**alpha


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def weighted_means(
    vectors: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, alpha: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """``normalise(v + sum_i w_i * n_i)`` row by row.

    Parameters
    ----------
    vectors : (m, d) array
        The vectors being replaced (queries, or database vectors).
    neighbours : (m, n, d) array
        Each vector's neighbours, best first.
    scores : (m, n) array
        Their similarities to the vector.
    valid : (m, n) bool array, optional
        False where a neighbour is missing (padding); it then weighs nothing.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    weights = neighbour_weights(scores, alpha)
    if valid is not None:
        weights = np.where(valid, weights, 0.0).astype(np.float32)
    total = vectors + np.einsum("mn,mnd->md", weights, np.asarray(neighbours, dtype=np.float32))
    return _normalise(total)


def expand_queries(
    queries: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, alpha: float = DEFAULT_ALPHA, valid=None
) -> np.ndarray:
    """αQE: the new query vectors, from the queries' top ``n`` results (see :func:`weighted_means`)."""
    return weighted_means(queries, neighbours, scores, alpha, valid)


#: Rows and columns of one tile of inner products (1 MB of float32): large
#: enough for BLAS to run at full speed, small enough that the tiles, not the
#: collection, bound the memory. A tile of all the rows against a few (the old
#: way) re-read every vector per block and ran at half speed.
TILE = 512


def top_k(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    own_rows: np.ndarray | None = None,
    tile: int = TILE,
    report: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` rows of ``vectors`` for each query by inner product, best first, in tiles.

    ``own_rows[i]`` (optional, -1 for none) is left out of query ``i``'s
    results: its own row when the queries are rows of ``vectors``. Returns
    ``(rows, scores)``, each ``(len(queries), k)``, -1 / -inf where fewer exist.
    ``report``, if given, is called with the fraction of the work done after each tile.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    best = _Best(len(queries), k)
    own = None if own_rows is None else np.asarray(own_rows, dtype=np.int64)
    tiles, done = -(-len(queries) // tile) * -(-len(vectors) // tile), 0
    for q0 in range(0, len(queries), tile):
        q1 = min(q0 + tile, len(queries))
        for v0 in range(0, len(vectors), tile):
            v1 = min(v0 + tile, len(vectors))
            block = queries[q0:q1] @ vectors[v0:v1].T
            if own is not None:
                local = own[q0:q1] - v0
                hit = np.flatnonzero((local >= 0) & (local < v1 - v0))
                block[hit, local[hit]] = -np.inf
            best.merge(q0, block, v0)
            done += 1
            if report is not None:
                report(done / tiles)
    return best.result()


def nearest_neighbours(
    vectors: np.ndarray, k: int, tile: int = TILE, report: Callable[[float], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` other rows of every row (a row is never its own neighbour); see :func:`top_k`.

    The inner products are symmetric, so each tile above the diagonal serves
    its rows and, transposed, its columns: half the arithmetic of
    :func:`top_k` (DBA's cost at the end of an indexing run, which grows
    with the square of the collection). ``report`` as for :func:`top_k`.
    """
    n = len(vectors)
    if not 1 <= k < n:
        raise UsageError(f"need 1 <= k < {n} (the number of vectors) for neighbours, got k={k}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    best = _Best(n, k)
    side = -(-n // tile)
    tiles, done = side * (side + 1) // 2, 0
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(i0, n, tile):
            j1 = min(j0 + tile, n)
            block = vectors[i0:i1] @ vectors[j0:j1].T
            if i0 == j0:
                np.fill_diagonal(block, -np.inf)
            best.merge(i0, block, j0)
            if j0 != i0:
                best.merge(j0, block, i0, transposed=True)
            done += 1
            if report is not None:
                report(done / tiles)
    return best.result()


def search_nearest_neighbours(
    vectors: np.ndarray, k: int, tile: int = TILE, report: Callable[[float], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_neighbours`, exact below :func:`cbir.ann.approximate.search_rule`'s threshold, approximate above."""
    n = len(vectors)
    rule = search_rule(n, n, k)
    if not rule.approximate:
        return nearest_neighbours(vectors, k, tile, report)
    if not 1 <= k < n:
        raise UsageError(f"need 1 <= k < {n} (the number of vectors) for neighbours, got k={k}")
    return approximate_top_k(vectors, vectors, k, own_rows=np.arange(n), rule=rule, report=report)


def search_top_k(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    own_rows: np.ndarray | None = None,
    tile: int = TILE,
    report: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k`, exact or approximate by :func:`cbir.ann.approximate.search_rule` for these sizes."""
    rule = search_rule(len(queries), len(vectors), k)
    if not rule.approximate:
        return top_k(queries, vectors, k, own_rows, tile, report)
    return approximate_top_k(queries, vectors, k, own_rows=own_rows, rule=rule, report=report)


class _Best:
    """Each row's best ``k`` columns so far, merged tile by tile."""

    def __init__(self, n: int, k: int):
        self.k = k
        self.rows = np.full((n, k), -1, dtype=np.int64)
        self.scores = np.full((n, k), -np.inf, dtype=np.float32)

    def merge(self, start: int, block: np.ndarray, column_offset: int, transposed: bool = False) -> None:
        """Merge ``block`` (rows ``start...``, columns ``column_offset...``; ``.T`` of it if ``transposed``)."""
        take = min(self.k, block.shape[0 if transposed else 1])
        if take == 0:
            return
        stop = start + block.shape[1 if transposed else 0]
        worst = self.scores[start:stop].min(axis=1)
        # Only rows with a column better than their k-th best so far can change:
        # after the first tiles few do, and the partial sort is skipped for the rest.
        if transposed:
            live = np.flatnonzero((block > worst[None, :]).any(axis=0))
            block = np.ascontiguousarray(block[:, live].T)
        else:
            live = np.flatnonzero((block > worst[:, None]).any(axis=1))
            block = block[live]
        if len(live) == 0:
            return
        cut = block.shape[1] - take
        found = np.argpartition(block, cut, axis=1)[:, cut:] if cut else np.broadcast_to(np.arange(take), block.shape)
        found_scores = np.take_along_axis(block, found, axis=1)
        live += start
        rows = np.concatenate([self.rows[live], found + column_offset], axis=1)
        scores = np.concatenate([self.scores[live], found_scores], axis=1)
        keep = np.argpartition(scores, take, axis=1)[:, take:]  # the best k of k + take
        self.rows[live] = np.take_along_axis(rows, keep, axis=1)
        self.scores[live] = np.take_along_axis(scores, keep, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-self.scores, axis=1, kind="stable")
        rows, scores = np.take_along_axis(self.rows, order, axis=1), np.take_along_axis(self.scores, order, axis=1)
        rows[~np.isfinite(scores)] = -1
        return rows, scores


def merge_neighbours(
    rows_a: np.ndarray, scores_a: np.ndarray, rows_b: np.ndarray, scores_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, the ``k`` best of two disjoint neighbour lists (-1 entries never win)."""
    rows = np.concatenate([rows_a, rows_b], axis=1)
    scores = np.concatenate([scores_a, scores_b], axis=1).astype(np.float32)
    scores = np.where(rows >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows, scores = np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)
    rows[~np.isfinite(scores)] = -1
    return rows, scores


def augment_database(
    vectors: np.ndarray, k: int, alpha: float = DEFAULT_ALPHA, neighbours: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """DBA-k: every vector replaced by the weighted mean of itself and its ``k`` nearest other vectors.

    ``neighbours`` may pass precomputed ``(rows, scores)`` (e.g. from FAISS);
    by default they are found exactly with :func:`nearest_neighbours`.

    Raises
    ------
    UsageError
        If ``k`` is below 1 or not smaller than the number of vectors.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if k < 1:
        raise UsageError(f"--dba must be at least 1, got {k}")
    if k >= len(vectors):
        raise UsageError(f"--dba {k} needs more than {k} images; the index holds {len(vectors)}")
    rows, scores = neighbours if neighbours is not None else nearest_neighbours(vectors, k)
    return augment_rows(vectors, np.arange(len(vectors)), rows[:, :k], scores[:, :k], alpha)


def augment_rows(vectors: np.ndarray, which: np.ndarray, rows: np.ndarray, scores: np.ndarray, alpha: float) -> np.ndarray:
    """DBA of the rows ``which`` of ``vectors`` only, given their neighbour ``rows`` and ``scores`` (-1 = none)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    which = np.asarray(which, dtype=np.int64)
    valid = rows >= 0
    augmented = np.empty((len(which), vectors.shape[1]), np.float32)
    for start in range(0, len(which), 4096):  # bounds the (block, k, d) gather
        part = slice(start, start + 4096)
        gathered = vectors[np.where(valid[part], rows[part], 0)]
        augmented[part] = weighted_means(vectors[which[part]], gathered, scores[part], alpha, valid[part])
    return augmented
