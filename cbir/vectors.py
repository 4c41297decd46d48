"""The FAISS side: index types, stable ids, search parameters, atomic save and load.

An index type is a FAISS ``index_factory`` string, stored in the manifest.
The short names ``flat``, ``hnsw``, ``ivf`` and ``ivfpq`` are resolved to a
factory string from the collection's size and dimension (rules in the spirit
of autofaiss); any other string is passed to FAISS as it is. Every index
carries the catalogue's int64 ids: IVF indexes store ids natively, everything
else is wrapped in ``IDMap2``. All vectors are L2-normalised, so the metric is
always inner product (cosine similarity).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from cbir.errors import IndexCorruptError, UsageError
from cbir.fileio import atomic_path

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")

#: Search-time knobs and the FAISS parameter each sets.
SEARCH_PARAMETERS = {"nprobe": "nprobe", "ef_search": "efSearch"}

# k-means wants a few dozen points per centroid; FAISS warns below 39.
_POINTS_PER_CENTROID = 39
_TRAIN_POINTS_PER_CENTROID = 64
# Below this many queries a search runs on one thread.
_PARALLEL_QUERIES = 16


def ivf_list_count(n_vectors: int) -> int:
    """Inverted lists for ``n_vectors``: the power of two nearest 4 * sqrt(n), at least 39 points each."""
    if n_vectors < 2 * _POINTS_PER_CENTROID:
        return 1
    wanted = 2 ** round(math.log2(4 * math.sqrt(n_vectors)))
    return max(1, min(wanted, n_vectors // _POINTS_PER_CENTROID))


def resolve_index_type(index_type: str, dim: int, n_vectors: int) -> tuple[str, dict[str, int]]:
    """Factory string and default search parameters for a short name or factory string.

    Returns
    -------
    factory : str
        A FAISS factory string (without the ``IDMap2`` wrapper).
    search_params : dict
        Defaults for :data:`SEARCH_PARAMETERS` (``nprobe``, ``ef_search``).
    """
    kind = index_type.strip()
    if kind.lower() == "flat":
        return "Flat", {}
    if kind.lower() == "hnsw":
        return "HNSW32", {"ef_search": 128}
    if kind.lower() == "ivf":
        nlist = ivf_list_count(n_vectors)
        return f"IVF{nlist},Flat", {"nprobe": _default_nprobe(nlist)}
    if kind.lower() == "ivfpq":
        nlist = ivf_list_count(n_vectors)
        m = _pq_subquantizers(dim)
        # 8-bit codes need 256 centroids per sub-quantizer: too many for small
        # collections, which get 4-bit fast-scan codes (16 centroids) instead.
        codes = "" if n_vectors >= 256 * _POINTS_PER_CENTROID else "x4fs"
        return f"IVF{nlist},PQ{m}{codes}", {"nprobe": _default_nprobe(nlist)}
    try:
        index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        choices = ", ".join(INDEX_TYPES)
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise UsageError(f"unknown index type {index_type!r} (use {choices} or a FAISS factory string): {message}") from None
    params = {"nprobe": _default_nprobe(faiss.extract_index_ivf(index).nlist)} if _is_ivf(index) else {}
    return kind, params


def _default_nprobe(nlist: int) -> int:
    # Probing ~1.5% of the lists (at least 8) keeps recall@10 high on clustered features.
    return min(nlist, max(8, nlist // 64))


def _pq_subquantizers(dim: int) -> int:
    # About 8 dimensions per sub-quantizer: with 4, FAISS's k-means falls on a
    # slow path (training took 34 s instead of 1 s for 16k vectors of 256-d).
    # It must divide the dimension, and fast-scan codes come in pairs.
    for m in range(max(2, dim // 8), 0, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    return dim


def _is_ivf(index: faiss.Index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


class VectorIndex:
    """A FAISS index holding catalogue ids, built from a factory string."""

    def __init__(self, index: faiss.Index, factory: str):
        self.index = index
        self.factory = factory

    @classmethod
    def create(cls, factory: str, dim: int) -> "VectorIndex":
        """An empty (possibly untrained) index for vectors of dimension ``dim``."""
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not isinstance(index, faiss.IndexIVF) and not factory.startswith("IDMap"):
            index = faiss.index_factory(dim, "IDMap2," + factory, faiss.METRIC_INNER_PRODUCT)
        return cls(index, factory)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def is_trained(self) -> bool:
        return self.index.is_trained

    @property
    def supports_removal(self) -> bool:
        """Whether FAISS can remove ids in place (otherwise removal means a rebuild)."""
        return isinstance(self._unwrapped(), (faiss.IndexFlat, faiss.IndexIVF))

    def _unwrapped(self) -> faiss.Index:
        # Only valid while self.index lives: the view does not own the index.
        return faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else self.index

    def train(self, vectors: np.ndarray) -> None:
        if self.index.is_trained:
            return
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            # Sizes were chosen from the collection; FAISS's "please provide
            # more training points" lines would only be noise on the terminal.
            ivf.cp.min_points_per_centroid = 1
            inner = faiss.downcast_index(ivf)
            if hasattr(inner, "do_polysemous_training"):
                # The factory turns it on, but it only serves Hamming-filtered
                # search, which cbir does not use: it made training 75x slower.
                inner.do_polysemous_training = False
            pq = getattr(inner, "pq", None)
            if pq is not None:
                pq.cp.min_points_per_centroid = 1
                # 64 points per centroid train codebooks nearly as well as
                # FAISS's default 256, in a quarter of the (long) time.
                pq.cp.max_points_per_centroid = 64
        self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids``; only call when :attr:`supports_removal`."""
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def set_search_params(self, params: dict[str, int]) -> None:
        """Apply ``nprobe`` / ``ef_search``; knobs the index type does not have are ignored."""
        space = faiss.ParameterSpace()
        for name, value in params.items():
            if value is None:
                continue
            if name not in SEARCH_PARAMETERS:
                raise UsageError(f"unknown search parameter {name!r}")
            if name == "nprobe" and not _is_ivf(self.index):
                continue
            # Decided by the index itself, not the factory string: a reader may
            # hold a manifest newer than the file it reads.
            if name == "ef_search" and not isinstance(self._unwrapped(), faiss.IndexHNSW):
                continue
            if int(value) < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
            space.set_index_parameter(self.index, SEARCH_PARAMETERS[name], int(value))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(n_queries, k)``; id -1 where fewer than k results exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if len(queries) >= _PARALLEL_QUERIES:
            return self.index.search(queries, k)
        # Waking OpenMP threads costs more than a few queries take (5 ms vs
        # 0.3 ms for one query on 1,000 vectors here): search them on one thread.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    # -- persistence -------------------------------------------------------
    def write(self, path: Path) -> None:
        """Write atomically (see :func:`cbir.fileio.atomic_path`)."""
        with atomic_path(path) as temporary:
            faiss.write_index(self.index, str(temporary))

    @classmethod
    def read(cls, path: Path, factory: str, dim: int) -> "VectorIndex":
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise IndexCorruptError(f"vector index {path} is unreadable ({detail})") from None
        if index.d != dim:
            raise IndexCorruptError(f"vector index {path} has dimension {index.d}, manifest says {dim}")
        return cls(index, factory)


def build_vector_index(
    factory: str,
    dim: int,
    blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    training_sample: Callable[[int], np.ndarray],
) -> VectorIndex:
    """Build and fill an index from ``(ids, vectors)`` blocks.

    ``training_sample(n)`` returns up to ``n`` vectors drawn at random from
    the collection, used to train IVF/PQ indexes.
    """
    vector_index = VectorIndex.create(factory, dim)
    if not vector_index.is_trained:
        nlist = faiss.extract_index_ivf(vector_index.index).nlist if _is_ivf(vector_index.index) else 1
        sample = training_sample(max(nlist * _TRAIN_POINTS_PER_CENTROID, 256 * _POINTS_PER_CENTROID))
        logger.info("training %s on %d vectors", factory, len(sample))
        try:
            vector_index.train(sample)
        except RuntimeError:
            # Too few vectors for the requested clustering: exact search is
            # both possible and better at this size.
            logger.warning("%d vectors are too few to train %r; using exact (flat) search for now", len(sample), factory)
            vector_index = VectorIndex.create("Flat", dim)
    for ids, vectors in blocks():
        vector_index.add(ids, vectors)
    return vector_index
