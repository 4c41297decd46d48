"""The FAISS side: index types, stable ids, search parameters, atomic save and load.

An index type is a FAISS ``index_factory`` string, stored in the manifest.
The short names ``flat``, ``hnsw``, ``ivf`` and ``ivfpq`` are resolved to a
factory string from the collection's size and dimension (rules in the spirit
of autofaiss); any other string is passed to FAISS as it is. Every index
carries the catalogue's int64 ids: IVF indexes store ids natively, everything
else is wrapped in ``IDMap2``. All vectors are L2-normalised, so the metric is
always inner product (cosine similarity).

Compressed indexes (``ivfpq``) re-rank a shortlist with the exact vectors the
catalogue stores, so their scores and order are exact; parameters chosen
from the collection's size are revisited once it has grown
:data:`RETUNE_GROWTH` times (:func:`retuned_index_type`). The measurements
behind the defaults are in docs/index-types.md.

At ~430 lines a little over the usual size: choosing a type's parameters,
building it (with its training fallback) and reading it back are one
contract about what a stored FAISS file is, kept in one place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np

from cbir.ann.hnsw_seeds import EntryPoints, entry_file, merge_results
from cbir.errors import CbirError, IndexCorruptError, UsageError
from cbir.fileio import atomic_path

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")

#: Search-time knobs and the FAISS parameter each sets.
SEARCH_PARAMETERS = {"nprobe": "nprobe", "ef_search": "efSearch"}
#: Search-time knob: re-rank ``rerank * k`` candidates with exact vectors (0: off).
RERANK = "rerank"
#: A short-named type's parameters are re-chosen once the collection is this many times larger.
RETUNE_GROWTH = 4

#: ``ids -> (ids found, their vectors)``: where exact vectors for re-ranking come from.
ExactVectors = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

FACTORY_HELP = (
    "use flat, hnsw, ivf, ivfpq, or a FAISS index_factory string such as 'HNSW32', 'IVF1024,Flat' "
    "or 'IVF1024,PQ32' (https://github.com/facebookresearch/faiss/wiki/The-index-factory)"
)

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
        return HNSW_FACTORY, {"ef_search": HNSW_EF_SEARCH}
    if kind.lower() == "ivf":
        nlist = ivf_list_count(n_vectors)
        return f"IVF{nlist},Flat", {"nprobe": _default_nprobe(nlist)}
    if kind.lower() == "ivfpq":
        # Compressed IVF: 4-bit scalar codes (d/2 bytes a vector), re-ranked
        # exactly. Product quantisation (PQ{d/8}) was smaller still but its
        # learned codebooks barely see a small group unlike the rest, whose
        # members it then scores at random: Corel P@10 0.747 at 1M against
        # exact 0.761, however long the shortlist (docs/index-types.md).
        nlist = ivf_list_count(n_vectors)
        return f"IVF{nlist},SQ4", {"nprobe": _default_nprobe(nlist), RERANK: PQ_RERANK}
    try:
        index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise UsageError(f"unknown index type {index_type!r} for {dim}-d vectors{_faiss_reason(exc)}: {FACTORY_HELP}") from None
    params = {"nprobe": _default_nprobe(faiss.extract_index_ivf(index).nlist)} if _is_ivf(index) else {}
    return kind, params


def _faiss_reason(exc: RuntimeError) -> str:
    # FAISS's messages carry C++ signatures and file names; keep only a plain reason, if any.
    text = str(exc)
    if "multiple of" in text:
        return " (the dimension must be a multiple of the number of PQ sub-quantizers)"
    return ""


def _plain_faiss_message(exc: RuntimeError) -> str:
    """FAISS's reason without the C++ function signature and source location around it."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    text = re.sub(r"^Error: '.*?' failed: ", "", text)
    return text or "damaged"


def retuned_index_type(
    index_type: str, factory: str, dim: int, tuned_for: int, n_vectors: int
) -> tuple[str, dict[str, int]] | None:
    """New ``(factory, search_params)`` once the collection has outgrown the parameters chosen for it.

    Only short names (``ivf``, ``ivfpq``...) are retuned, once the collection
    holds :data:`RETUNE_GROWTH` times the vectors the parameters were chosen
    for; a factory string is the user's own choice and is kept.
    """
    if index_type.strip().lower() not in INDEX_TYPES or n_vectors < RETUNE_GROWTH * max(tuned_for, 1):
        return None
    new_factory, params = resolve_index_type(index_type, dim, n_vectors)
    return None if new_factory == factory else (new_factory, params)


#: ``hnsw``: 32 links per node; efConstruction and efSearch measured in docs/index-types.md.
HNSW_FACTORY = "HNSW32"
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
#: ``ivfpq``: candidates re-ranked with exact vectors, per result asked for. With
#: 4-bit scalar codes, 8 k gave recall@10 0.995 (synthetic) / 0.999 (real) at 1M,
#: 16 k 0.9996 / 0.9996 for 0.4 ms more of fetching from SQLite.
PQ_RERANK = 8


def _default_nprobe(nlist: int) -> int:
    # 1/64 of the lists keeps recall@10 at 1.0 from 2048 lists up (200k+ vectors,
    # ~1.3 ms at 1M); smaller collections have fewer vectors per list, and a
    # query's neighbours spread over more of them: nprobe 8 of 512 lists gave
    # recall@10 0.79 at 20k. At least 32 lists costs little there.
    return min(nlist, max(32, nlist // 64))


def _is_ivf(index: faiss.Index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


class FilterUnsupported(CbirError):
    """FAISS cannot restrict a search of this index type to chosen ids (the caller searches the subset itself)."""


class VectorIndex:
    """A FAISS index holding catalogue ids, built from a factory string.

    ``exact_vectors`` (ids -> found ids and their vectors) lets a compressed
    index re-rank its candidates exactly; see :data:`RERANK`. An HNSW index
    carries :attr:`entry_points` (:mod:`cbir.ann.hnsw_seeds`), saved beside
    its file, so that its graph reaches groups of vectors unlike the rest.
    """

    def __init__(self, index: faiss.Index, factory: str, exact_vectors: ExactVectors | None = None):
        self.index = index
        self.factory = factory
        self.exact_vectors = exact_vectors
        self.rerank = 0
        self.entry_points: EntryPoints | None = None
        #: Read with its inverted lists memory-mapped from the file (read-only: nothing may be added).
        self.mapped = False

    @classmethod
    def create(cls, factory: str, dim: int) -> "VectorIndex":
        """An empty (possibly untrained) index for vectors of dimension ``dim``."""
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
            if not isinstance(index, faiss.IndexIVF) and not factory.startswith("IDMap"):
                index = faiss.index_factory(dim, "IDMap2," + factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise UsageError(f"FAISS cannot build index type {factory!r} for {dim}-d vectors{_faiss_reason(exc)}: {FACTORY_HELP}") from None
        hnsw = _unwrap(index)
        if isinstance(hnsw, faiss.IndexHNSW):
            # FAISS's default (40) leaves a group of vectors unlike the rest
            # (a new kind of photo) badly linked into the graph.
            hnsw.hnsw.efConstruction = max(hnsw.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
        vector_index = cls(index, factory)
        if isinstance(hnsw, faiss.IndexHNSW):
            vector_index.entry_points = EntryPoints(dim)
        return vector_index

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
        return _unwrap(self.index)

    def matches(self, factory: str) -> bool:
        """Whether this index has the structure ``factory`` builds (type, lists, code size, links)."""
        try:
            expected = VectorIndex.create(factory, self.dim)
        except CbirError:
            return False
        return _structure(expected.index) == _structure(self.index)

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
        if self.mapped and len(ids):
            # FAISS would throw inside OpenMP and abort the process: refuse first.
            raise RuntimeError("a memory-mapped vector index is read-only; read it with mmap=False to add to it")
        if len(ids):
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            first = self.index.ntotal
            self.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
            if self.entry_points is not None:
                self.entry_points.after_add(self._unwrapped(), first, vectors)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids``; only call when :attr:`supports_removal`."""
        if len(ids) == 0:
            return 0
        if self.mapped:
            raise RuntimeError("a memory-mapped vector index is read-only; read it with mmap=False to remove from it")
        return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def set_search_params(self, params: dict[str, int]) -> None:
        """Apply ``nprobe`` / ``ef_search`` / ``rerank``; knobs the index type does not have are ignored."""
        space = faiss.ParameterSpace()
        for name, value in params.items():
            if value is None:
                continue
            if name not in SEARCH_PARAMETERS and name != RERANK:
                raise UsageError(f"unknown search parameter {name!r}")
            if int(value) < (0 if name == RERANK else 1):
                raise UsageError(f"{name} must be at least {0 if name == RERANK else 1}, got {value}")
            if name == RERANK:
                self.rerank = int(value)
                continue
            if name == "nprobe" and not _is_ivf(self.index):
                continue
            # Decided by the index itself, not the factory string: a reader may
            # hold a manifest newer than the file it reads.
            if name == "ef_search" and not isinstance(self._unwrapped(), faiss.IndexHNSW):
                continue
            space.set_index_parameter(self.index, SEARCH_PARAMETERS[name], int(value))

    def search(self, queries: np.ndarray, k: int, selector: "faiss.IDSelector | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(n_queries, k)``; id -1 where fewer than k results exist.

        With :attr:`rerank` set and :attr:`exact_vectors` given, ``rerank * k``
        candidates are scored again with their exact vectors; candidates
        whose vector is gone (removed since the snapshot) are dropped.
        ``selector`` (a FAISS ``IDSelector`` of catalogue ids) restricts the
        search to those ids: exact on a flat index; HNSW and IVF may return
        fewer than ``k`` (a graph walk or the probed lists hold too few), and
        a type FAISS cannot filter raises :class:`FilterUnsupported`.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if not (self.rerank and self.exact_vectors is not None):
            return self._search(queries, k, selector)
        _scores, candidates = self._search(queries, min(k * self.rerank, max(self.ntotal, 1)), selector)
        return _rerank(queries, candidates, k, self.exact_vectors)

    def _search(self, queries: np.ndarray, k: int, selector=None) -> tuple[np.ndarray, np.ndarray]:
        if len(queries) >= _PARALLEL_QUERIES:
            return self._search_index(queries, k, selector)
        # Waking OpenMP threads costs more than a few queries take (5 ms vs
        # 0.3 ms for one query on 1,000 vectors here): search them on one thread.
        with _omp_threads(1):
            return self._search_index(queries, k, selector)

    def _filter_parameters(self, selector, k: int):
        """FAISS search parameters carrying ``selector`` and this index's own knobs (FAISS's defaults would replace them)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        inner = self._unwrapped()
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector)
            params.nprobe = ivf.nprobe
        elif isinstance(inner, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=selector)
            params.efSearch = max(inner.hnsw.efSearch, k)
        else:
            params = faiss.SearchParameters(sel=selector)
        return params

    def _search_index(self, queries: np.ndarray, k: int, selector=None) -> tuple[np.ndarray, np.ndarray]:
        if selector is not None:
            params = self._filter_parameters(selector, k)
            try:
                return self.index.search(queries, k, params=params)
            except RuntimeError as exc:  # e.g. fast-scan PQ: FAISS has no filtered search for it
                raise FilterUnsupported(f"index type {self.factory} cannot filter a search ({_plain_faiss_message(exc)})") from None
        scores, ids = self.index.search(queries, k)
        if self.entry_points is None:
            return scores, ids
        # HNSW: also search from the query's nearest leaders, keep the best of both.
        seeded_scores, nodes = self.entry_points.search(self._unwrapped(), queries, k)
        if isinstance(self.index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            id_map = faiss.rev_swig_ptr(self.index.id_map.data(), self.index.id_map.size())
            nodes = np.where(nodes >= 0, id_map[np.maximum(nodes, 0)], -1)
        return merge_results(scores, ids, seeded_scores, nodes, k)

    # -- persistence -------------------------------------------------------
    def write(self, path: Path) -> None:
        """Write atomically (see :func:`cbir.fileio.atomic_path`), entry points first, beside the file."""
        if self.entry_points is not None:
            self.entry_points.write(entry_file(path), self.ntotal)
        else:
            entry_file(path).unlink(missing_ok=True)  # a leftover of another index of this name
        with atomic_path(path) as temporary:
            faiss.write_index(self.index, str(temporary))

    @classmethod
    def read(cls, path: Path, factory: str, dim: int, mmap: bool = False) -> "VectorIndex":
        """The index in ``path``. With ``mmap``, an IVF index's inverted lists (its codes and ids,
        nearly all of its size) stay in the file, memory-mapped read-only: a reader's memory then
        holds only the lists its searches touch, not the collection (other types are read whole)."""
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
        except RuntimeError as exc:
            raise IndexCorruptError(f"vector index {path} is unreadable ({_plain_faiss_message(exc)})") from None
        if index.d != dim:
            raise IndexCorruptError(f"vector index {path} has dimension {index.d}, manifest says {dim}")
        vector_index = cls(index, factory)
        ivf = faiss.try_extract_index_ivf(index)
        lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
        vector_index.mapped = bool(mmap and isinstance(lists, faiss.OnDiskInvertedLists))
        if vector_index.mapped:
            # FAISS would start prefetch threads on every search (up to 32, each touching the
            # probed lists): several ms a single query; the page cache does that job.
            lists.prefetch_nthread = 0
        hnsw = vector_index._unwrapped()
        if isinstance(hnsw, faiss.IndexHNSW):
            # Files written before entry points existed search as plain HNSW.
            vector_index.entry_points = EntryPoints.read(entry_file(path), hnsw)
        return vector_index


def build_vector_index(
    factory: str,
    dim: int,
    blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    training_sample: Callable[[int], np.ndarray],
    count: int | None = None,
) -> VectorIndex:
    """Build and fill an index from ``(ids, vectors)`` blocks.

    ``training_sample(n)`` returns up to ``n`` vectors drawn at random from
    the collection, used to train IVF/PQ indexes. ``count``, how many vectors
    the blocks hold, lets a flat index size its storage once.
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
    if count:
        _reserve(vector_index.index, count)
    for ids, vectors in blocks():
        vector_index.add(ids, vectors)
    return vector_index


def _reserve(index: faiss.Index, count: int) -> None:
    """Room for ``count`` vectors in an empty flat index: FAISS would grow its storage by
    reallocation (old and new buffer held while copying); emptied, it keeps the capacity."""
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexFlatCodes) and inner.ntotal == 0:
        inner.codes.resize(count * inner.code_size)
        inner.codes.resize(0)


def _unwrap(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index


def _structure(index: faiss.Index) -> tuple:
    """What tells two index types apart: class, dimension, IVF lists and code size, HNSW links."""
    inner = faiss.downcast_index(_unwrap(faiss.downcast_index(index)))
    # A flat index reads back as IndexFlatIP though the factory builds an IndexFlat with that metric.
    name = "IndexFlat" if isinstance(inner, faiss.IndexFlat) else type(inner).__name__
    shape: tuple = (name, inner.d, inner.metric_type)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        shape += (ivf.nlist, ivf.code_size, type(faiss.downcast_index(ivf)).__name__)
    if isinstance(inner, faiss.IndexHNSW):
        shape += (inner.hnsw.nb_neighbors(1),)
    return shape


def _rerank(queries: np.ndarray, candidates: np.ndarray, k: int, exact_vectors: ExactVectors) -> tuple[np.ndarray, np.ndarray]:
    found, vectors = exact_vectors(np.unique(candidates[candidates >= 0]))
    order = np.argsort(found)
    found, vectors = found[order], vectors[order]
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    if len(found) == 0:
        return scores, ids
    rows = np.minimum(np.searchsorted(found, candidates), len(found) - 1)
    present = found[rows] == candidates  # -1 padding and ids removed since the snapshot drop out
    for q in range(len(queries)):
        mine = rows[q][present[q]]
        exact = vectors[mine] @ queries[q]
        best = np.argsort(-exact, kind="stable")[:k]
        scores[q, : len(best)] = exact[best]
        ids[q, : len(best)] = found[mine[best]]
    return scores, ids


# OpenMP keeps the thread count per thread (libgomp, which faiss-cpu ships,
# and LLVM's libomp): omp_set_num_threads in one thread leaves every other
# thread's count alone, and a new thread starts from the process default. So
# a search sets the count on its own thread and puts that thread's own value
# back afterwards; concurrent searches in other threads never see it, and a
# caller's own FAISS work on this thread keeps its setting.
@contextlib.contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    own = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(own)
