"""Diffusion re-ranking (Iscen, Tolias, Avrithis, Furon, Chum, "Efficient diffusion on region manifolds", CVPR 2017).

A query's similarity spreads over the database's k-nearest-neighbour graph,
so images reached through chains of close neighbours rank high even when
they are far from the query itself (a category's other poses and views):

* the graph: each vector's top ``k`` other vectors; an edge kept where the
  two are each other's neighbours (mutual), weighted ``max(s, 0) ** gamma``;
  ``S = D^-1/2 W D^-1/2``, its symmetric normalisation;
* the query: ``y`` holds ``max(s, 0) ** gamma`` of its own top ``query_k``
  database vectors, zero elsewhere;
* the ranking: ``f`` solving ``(I - alpha S) f = y`` (the closed form of
  ``f = alpha S f + y`` iterated), found by conjugate gradient: ``I - alpha
  S`` is symmetric positive definite for ``alpha < 1``; each iteration is one
  sparse product, ``n * k`` multiply-adds.

Pure numpy over ``(n, k)`` neighbour arrays: a graph with a fixed number of
neighbours a row needs no sparse-matrix library. Measured against DBA + αQE
in docs/rerank.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Iscen et al.'s settings: k = 50 neighbours, gamma = 3, alpha = 0.99; query_k as their k_q.
DEFAULT_K = 50
DEFAULT_GAMMA = 3.0
DEFAULT_ALPHA = 0.99
DEFAULT_QUERY_K = 10


@dataclass(frozen=True)
class Graph:
    """A symmetric, normalised kNN graph: row ``i``'s neighbours ``rows[i]`` and weights ``S[i, rows[i]]``."""

    rows: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def apply(self, f: np.ndarray) -> np.ndarray:
        """``S @ f`` for ``f`` of shape ``(n,)`` or ``(n, m)``."""
        out = np.zeros(f.shape, np.float64)
        for column in range(self.rows.shape[1]):  # one neighbour at a time: no (n, k, m) gather
            weights = self.weights[:, column]
            out += (weights if f.ndim == 1 else weights[:, None]) * f[self.rows[:, column]]
        return out

    def dense(self) -> np.ndarray:
        """``S`` as a dense matrix (for tests and tiny collections)."""
        out = np.zeros((len(self), len(self)), np.float64)
        np.add.at(out, (np.repeat(np.arange(len(self)), self.rows.shape[1]), self.rows.ravel()), self.weights.ravel())
        return out


def knn_graph(rows: np.ndarray, scores: np.ndarray, gamma: float = DEFAULT_GAMMA) -> Graph:
    """:class:`Graph` from each vector's top-k other rows (``-1`` padding) and their cosine scores.

    Only mutual neighbours keep their edge, so the graph is symmetric (and
    stays ``(n, k)``: an edge is in both its rows or in neither).
    """
    rows = np.asarray(rows, np.int64)
    n, k = rows.shape
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    # Mutual: i lists j and j lists i.
    mutual = valid & (rows[safe] == np.arange(n)[:, None, None]).any(axis=2)
    weights = np.where(mutual, np.clip(np.asarray(scores, np.float64), 0.0, None) ** gamma, 0.0)
    degree = weights.sum(axis=1)
    inverse_root = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    normalised = weights * inverse_root[:, None] * inverse_root[safe]
    return Graph(safe, np.where(mutual, normalised, 0.0))


def query_seeds(ids: np.ndarray, scores: np.ndarray, n: int, gamma: float = DEFAULT_GAMMA) -> np.ndarray:
    """``y`` of ``m`` queries, ``(n, m)``: ``max(s, 0) ** gamma`` at each query's top rows ``ids`` (``(m, query_k)``, -1 padding)."""
    ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
    y = np.zeros((n, len(ids)), np.float64)
    columns = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    keep = ids >= 0
    np.add.at(y, (ids[keep], columns[keep]), np.clip(scores[keep].astype(np.float64), 0.0, None) ** gamma)
    return y


def diffuse(graph: Graph, y: np.ndarray, alpha: float = DEFAULT_ALPHA, iterations: int = 20, tolerance: float = 1e-6) -> np.ndarray:
    """``f`` with ``(I - alpha S) f = y`` by conjugate gradient, each column of ``y`` on its own; at most ``iterations``."""
    if not 0 <= alpha < 1:
        raise ValueError(f"diffusion alpha must be in [0, 1), got {alpha}")
    y = np.asarray(y, np.float64)
    f = np.zeros_like(y)
    residual = y.copy()
    direction = residual.copy()
    rr = (residual * residual).sum(axis=0)
    goal = tolerance**2 * np.maximum(rr, 1e-300)
    for _ in range(iterations):
        if np.all(rr <= goal):
            break
        product = direction - alpha * graph.apply(direction)
        step = rr / np.maximum((direction * product).sum(axis=0), 1e-300)
        f += step * direction
        residual -= step * product
        new_rr = (residual * residual).sum(axis=0)
        direction = residual + (new_rr / np.maximum(rr, 1e-300)) * direction
        rr = new_rr
    return f
