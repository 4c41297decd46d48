"""Entry points that let an HNSW graph reach a group of vectors unlike the rest.

HNSW inserts and searches greedily from one entry point. A group of vectors
with no similarity to the rest of the collection (a new kind of photo added
as the collection grows) is a plateau for that walk: insertion does not find
the group's earlier members, so they link to arbitrary nodes, and a search
from the group never gets into it (Corel P@10 0.42 against exact 0.76 at
200,000 vectors, docs/index-types.md). :class:`EntryPoints` fixes both ends:

- **leaders**: stored vectors that seed a level-0 search, the stored vector
  nearest each k-means centroid of a sample of the collection (re-chosen each
  time the collection has grown :data:`_RESEED_GROWTH` times), plus leaders
  of every group of *novel* vectors an add brings;
- **novel** vectors are those less similar to their nearest leader than
  :attr:`EntryPoints.threshold`, the 1st percentile of the collection's own
  similarities when the leaders were chosen. After an add, novel vectors get
  leaders of their own (k-means over them, one per 64) and their level-0
  links are rewritten to their best neighbours among the other novel vectors
  of the add (exact) and the graph (searched from the leaders);
- a search runs HNSW's own search and a level-0 search from the query's
  nearest leaders, and keeps the best k of both: never worse than HNSW's.

Saved beside the FAISS file as ``<stem>.entry.npz`` (plain arrays, read
without pickle); the links themselves live in the FAISS file. The state is
derived from the index alone, so rebuilding the index from the catalogue
rebuilds it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from cbir.fileio import atomic_path

logger = logging.getLogger(__name__)

#: Leaders chosen from a sample of the collection, at most.
_SAMPLE_LEADERS = 1024
#: Vectors (sampled, or novel in one add) per leader.
_POINTS_PER_LEADER = 64
_SAMPLE = 65536
#: A vector less similar to its nearest leader than this share of the collection is novel.
_NOVEL_QUANTILE = 0.01
#: Leaders are re-chosen from a sample once the collection is this many times larger.
_RESEED_GROWTH = 4
#: Leaders a search starts from.
_SEEDS = 8
_FORMAT = 1
ENTRY_SUFFIX = ".entry.npz"


def entry_file(index_file: Path) -> Path:
    """Where the entry points of the FAISS file ``index_file`` are kept."""
    return index_file.with_name(index_file.stem + ENTRY_SUFFIX)


class EntryPoints:
    """Leaders (internal node numbers of an ``IndexHNSW``) and the novelty threshold; see the module."""

    def __init__(self, dim: int, leaders: np.ndarray | None = None, threshold: float = -np.inf, seeded_at: int = 0):
        self.dim = dim
        self.leaders = np.zeros(0, np.int64) if leaders is None else np.asarray(leaders, np.int64)
        self.threshold = float(threshold)
        self.seeded_at = int(seeded_at)
        self._leader_vectors = faiss.IndexFlatIP(dim)

    # -- persistence -------------------------------------------------------
    def write(self, path: Path, ntotal: int) -> None:
        with atomic_path(path) as temporary:
            np.savez(
                temporary,
                format=np.array([_FORMAT], np.int64),
                leaders=self.leaders,
                threshold=np.array([self.threshold], np.float64),
                counts=np.array([self.seeded_at, ntotal], np.int64),
            )

    @classmethod
    def read(cls, path: Path, hnsw: faiss.IndexHNSW) -> EntryPoints | None:
        """The entry points saved at ``path`` for ``hnsw``; None (with a warning) if missing or not this index's."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                fmt, leaders = int(arrays["format"][0]), arrays["leaders"].astype(np.int64)
                threshold, (seeded_at, ntotal) = float(arrays["threshold"][0]), arrays["counts"].tolist()
        except (OSError, ValueError, KeyError, IndexError) as exc:
            logger.warning("entry points %s are unreadable (%s); searching the HNSW graph from its own entry point", path, exc)
            return None
        if fmt != _FORMAT or ntotal != hnsw.ntotal or (len(leaders) and (leaders.min() < 0 or leaders.max() >= ntotal)):
            logger.warning("entry points %s do not belong to this index; searching the HNSW graph from its own entry point", path)
            return None
        entry = cls(hnsw.d, threshold=threshold, seeded_at=seeded_at)
        entry._add_leaders(hnsw, leaders)
        return entry

    # -- building ----------------------------------------------------------
    def after_add(self, hnsw: faiss.IndexHNSW, first: int, vectors: np.ndarray) -> None:
        """Update after ``vectors`` were added to ``hnsw`` as nodes ``first...``: leaders, then novel vectors' links."""
        if hnsw.ntotal >= _RESEED_GROWTH * max(self.seeded_at, 1):
            self._reseed(hnsw)
        if len(self.leaders) == 0 or len(vectors) == 0:
            return
        best, _ = self._leader_vectors.search(vectors, 1)
        novel = np.flatnonzero(best[:, 0] < self.threshold)
        if len(novel):
            logger.debug("%d novel vectors of %d: new leaders and level-0 links", len(novel), len(vectors))
            self._link_novel(hnsw, first + novel, np.ascontiguousarray(vectors[novel]))

    def _reseed(self, hnsw: faiss.IndexHNSW) -> None:
        rng = np.random.default_rng(hnsw.ntotal)
        sample = np.sort(rng.choice(hnsw.ntotal, size=min(hnsw.ntotal, _SAMPLE), replace=False))
        vectors = _reconstruct(hnsw, sample)
        self._add_leaders(hnsw, sample[_representatives(vectors, min(_SAMPLE_LEADERS, len(vectors) // _POINTS_PER_LEADER))])
        best, _ = self._leader_vectors.search(vectors, 1)
        self.threshold = float(np.quantile(best[:, 0], _NOVEL_QUANTILE))
        self.seeded_at = hnsw.ntotal

    def _link_novel(self, hnsw: faiss.IndexHNSW, nodes: np.ndarray, vectors: np.ndarray) -> None:
        self._add_leaders(hnsw, nodes[_representatives(vectors, len(vectors) // _POINTS_PER_LEADER)])
        links = hnsw.hnsw.nb_neighbors(0)
        among = faiss.IndexFlatIP(self.dim)
        among.add(vectors)
        near_sims, near = among.search(vectors, min(links + 1, len(vectors)))
        near = np.where(near >= 0, nodes[np.maximum(near, 0)], -1)
        graph_sims, graph = self.search(hnsw, vectors, links + 1, max(hnsw.hnsw.efSearch, 2 * links))
        candidates = np.concatenate([near, graph], axis=1)
        sims = np.concatenate([near_sims, graph_sims], axis=1)
        neighbours = _int_view(hnsw.hnsw.neighbors)
        offsets = _int_view(hnsw.hnsw.offsets)
        for row, node in enumerate(nodes):
            chosen = _best_unique(candidates[row], sims[row], links, exclude=node)
            start = int(offsets[node])  # level 0 comes first in a node's neighbour list
            neighbours[start : start + links] = -1
            neighbours[start : start + len(chosen)] = chosen

    def _add_leaders(self, hnsw: faiss.IndexHNSW, nodes: np.ndarray) -> None:
        nodes = np.setdiff1d(np.asarray(nodes, np.int64), self.leaders)
        if len(nodes):
            self.leaders = np.concatenate([self.leaders, nodes])
            self._leader_vectors.add(_reconstruct(hnsw, nodes))

    # -- searching ---------------------------------------------------------
    def search(self, hnsw: faiss.IndexHNSW, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, node numbers)`` of a level-0 search from each query's nearest leaders."""
        n = len(queries)
        scores = np.full((n, k), -np.inf, np.float32)
        nodes = np.full((n, k), -1, np.int64)
        seeds = min(_SEEDS, len(self.leaders))
        if seeds == 0 or n == 0:
            return scores, nodes
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sims, rows = self._leader_vectors.search(queries, seeds)
        nearest = np.ascontiguousarray(self.leaders[rows], dtype=np.int32)
        nearest_d = np.ascontiguousarray(-sims)  # HNSW walks inner products as negated distances
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(k, ef or hnsw.hnsw.efSearch)
        hnsw.search_level_0(
            n, faiss.swig_ptr(queries), k, faiss.swig_ptr(nearest), faiss.swig_ptr(nearest_d),
            faiss.swig_ptr(scores), faiss.swig_ptr(nodes), seeds, 2, params,
        )  # fmt: skip
        return scores, nodes


def merge_results(scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray, ids_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` distinct ids of two result lists per query (id -1 where fewer)."""
    scores = np.full((len(ids_a), k), -np.inf, np.float32)
    ids = np.full((len(ids_a), k), -1, np.int64)
    both_ids = np.concatenate([ids_a, ids_b], axis=1)
    both_scores = np.concatenate([scores_a, scores_b], axis=1)
    for row in range(len(ids_a)):
        chosen, positions = _best_unique(both_ids[row], both_scores[row], k, with_positions=True)
        scores[row, : len(chosen)] = both_scores[row, positions]
        ids[row, : len(chosen)] = chosen
    return scores, ids


def _best_unique(ids: np.ndarray, scores: np.ndarray, k: int, exclude: int = -1, with_positions: bool = False):
    order = np.argsort(-scores, kind="stable")
    ordered = ids[order]
    _unique, first = np.unique(ordered, return_index=True)
    first = np.sort(first)
    first = first[(ordered[first] >= 0) & (ordered[first] != exclude)][:k]
    return (ordered[first], order[first]) if with_positions else ordered[first]


def _representatives(vectors: np.ndarray, count: int) -> np.ndarray:
    """Rows of ``vectors`` nearest the centroids of a spherical k-means into ``count`` (at least 1) clusters."""
    count = max(1, min(count, len(vectors)))
    if count == 1:
        centroids = vectors.mean(axis=0, keepdims=True)
    else:
        kmeans = faiss.Kmeans(vectors.shape[1], count, niter=10, spherical=True, seed=1234)
        kmeans.cp.min_points_per_centroid = 1
        kmeans.train(vectors)
        centroids = kmeans.centroids
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _sims, rows = flat.search(np.ascontiguousarray(centroids, dtype=np.float32), 1)
    return np.unique(rows[:, 0][rows[:, 0] >= 0])


def _reconstruct(hnsw: faiss.IndexHNSW, nodes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(hnsw.storage.reconstruct_batch(np.asarray(nodes, np.int64)), dtype=np.float32)


def _int_view(vector) -> np.ndarray:
    """A writable NumPy view of a FAISS vector (valid until the vector grows)."""
    return faiss.rev_swig_ptr(vector.data(), vector.size())
