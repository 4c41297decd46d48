"""Query by example: image -> vector (exactly as the collection) -> ids -> catalogue rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cbir.augmentation import AugmentedVectors
from cbir.errors import ImageError, UsageError
from cbir.images import normalize_path, read_image
from cbir.rerank import DEFAULT_ALPHA, DEFAULT_EXPAND, check_alpha, check_expand, expand_queries
from cbir.store import IndexStore, index_path


@dataclass(frozen=True)
class Match:
    """One search result."""

    rank: int
    path: str
    score: float
    id: int
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": self.path, "score": self.score}


@dataclass(frozen=True)
class QueryResult:
    """The ranked matches of one query image."""

    query: str
    results: list[Match]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "results": [m.to_dict() for m in self.results]}


class Searcher:
    """An index opened for queries: embedder loaded and FAISS index in memory.

    Opening costs a model load (and for deep extractors a TensorFlow import);
    each query after that costs one embedding and one search, so keep a
    ``Searcher`` open to answer many queries.

    Parameters
    ----------
    store : IndexStore
        An index opened for reading (see :meth:`open`).
    nprobe, ef_search : int, optional
        Search-time knobs of IVF and HNSW indexes; the index's defaults otherwise.
    expand, alpha : int or None, float
        Alpha query expansion (:mod:`cbir.rerank`): each query is searched
        again as the weighted mean of itself and its top ``expand`` results
        (``None``: one plain search). Scores are then similarities to the
        expanded query.
    """

    def __init__(
        self,
        store: IndexStore,
        nprobe: int | None = None,
        ef_search: int | None = None,
        expand: int | None = DEFAULT_EXPAND,
        alpha: float = DEFAULT_ALPHA,
    ):
        check_expand(expand)
        check_alpha(alpha)
        self.store = store
        self.expand = expand
        self.alpha = alpha
        loaded = store.load_vectors()
        self.vectors = loaded.index
        self.stale_ids = loaded.stale_ids
        params = dict(store.manifest.get("search_params") or {})
        params.update({k: v for k, v in {"nprobe": nprobe, "ef_search": ef_search}.items() if v is not None})
        self.vectors.set_search_params(params)
        self._embedder = None
        self._augmented = AugmentedVectors.load(store)

    @classmethod
    def open(cls, name: str, index_dir: str | os.PathLike | None = None, **search_params) -> "Searcher":
        """Open the index ``name`` in ``index_dir`` (``indexes/`` by default)."""
        store = IndexStore.open(index_path(name, index_dir))
        try:
            return cls(store, **search_params)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Number of images a query can return."""
        return self.vectors.ntotal - self.stale_ids

    @property
    def augmented(self) -> bool:
        """Whether the index searches DBA-augmented vectors (:mod:`cbir.augmentation`)."""
        return self._augmented is not None

    def plain_vectors(self):
        """A FAISS index of the original vectors, built from the catalogue (for exact-similarity work)."""
        from cbir.vectors import build_vector_index

        store = self.store
        ids = np.array([row.id for row in store.catalogue.image_rows()], dtype=np.int64)
        sample = lambda n: store.catalogue.vectors_for_ids(ids[:: max(1, len(ids) // max(n, 1))].tolist(), store.dim)  # noqa: E731
        return build_vector_index(store.factory, store.dim, lambda: store.catalogue.iter_vectors(store.dim), sample)

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = self.store.embedder()
        return self._embedder

    def stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The vectors the index searches for catalogue ``ids`` (augmented ones under DBA), -1 giving zeros."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((*ids.shape, self.store.dim), np.float32)
        found = np.zeros(ids.shape, bool)
        if self._augmented is not None:
            out, found = self._augmented.lookup(ids)
        wanted = (ids >= 0) & ~found
        if wanted.any():
            unique, inverse = np.unique(ids[wanted], return_inverse=True)
            out[wanted] = self.store.catalogue.vectors_for_ids(unique.tolist(), self.store.dim)[inverse]
        return out

    def expand_queries(self, vectors: np.ndarray, exclude_ids: np.ndarray | None = None) -> np.ndarray:
        """αQE: each vector replaced by the weighted mean of itself and its top ``expand`` results.

        ``exclude_ids`` (one per vector, -1 for none) are left out of the
        neighbours: a query's own entry when evaluating leave-one-out.
        """
        if not self.expand:
            return vectors
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        extra = self.stale_ids + (1 if exclude_ids is not None else 0)
        scores, ids = self.vectors.search(vectors, self.expand + extra)
        if self.stale_ids:
            live = {row.id for row in self.store.catalogue.image_rows(np.unique(ids[ids >= 0]).tolist())}
            ids = np.where(np.isin(ids, list(live)), ids, -1)
        if exclude_ids is not None:
            ids = np.where(ids == np.asarray(exclude_ids)[:, None], -1, ids)
        order = np.argsort(ids < 0, axis=1, kind="stable")[:, : self.expand]  # first `expand` real results
        ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
        return expand_queries(vectors, self.stored_vectors(ids), scores, self.alpha, valid=ids >= 0)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Match]]:
        """The ``k`` best matches of each vector, best first (after query expansion, if on)."""
        self._check_k(k)
        vectors = self.expand_queries(vectors)
        scores, ids = self.vectors.search(vectors, k + self.stale_ids)
        rows = {row.id: row for row in self.store.catalogue.image_rows(np.unique(ids[ids >= 0]).tolist())}
        results = []
        for score_row, id_row in zip(scores, ids):
            matches: list[Match] = []
            for score, image_id in zip(score_row, id_row):
                row = rows.get(int(image_id))
                if row is None:  # -1 padding, or removed since the FAISS file was written
                    continue
                matches.append(Match(len(matches) + 1, row.path, float(score), row.id, row.label))
                if len(matches) == k:
                    break
            results.append(matches)
        return results

    def query(self, image_path: str | os.PathLike, k: int = 10) -> QueryResult:
        """Search with one image file."""
        return self.query_many([image_path], k)[0]

    def query_many(
        self,
        image_paths: Sequence[str | os.PathLike],
        k: int = 10,
        on_error: Callable[[str, ImageError], None] | None = None,
        batch_size: int = 32,
    ) -> list[QueryResult]:
        """Search with several image files, batch by batch (one result per readable file, in order).

        A file that cannot be read raises :class:`~cbir.errors.ImageError`,
        unless ``on_error(path, error)`` is given: then it is reported there
        and left out.
        """
        self._check_k(k)
        embedder = self.embedder
        results = []
        paths = [str(normalize_path(p)) for p in image_paths]
        for start in range(0, len(paths), batch_size):
            readable, images = [], []
            for path in paths[start : start + batch_size]:
                try:
                    images.append(read_image(path, min_side=embedder.decode_min_side))
                except ImageError as exc:
                    if on_error is None:
                        raise
                    on_error(path, exc)
                    continue
                readable.append(path)
            if images:
                matches = self.search_vectors(embedder.transform(images), k)
                results.extend(QueryResult(path, found) for path, found in zip(readable, matches))
        return results

    def _check_k(self, k: int) -> None:
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        if k > self.size:
            raise UsageError(f"k={k} is larger than index {self.store.name!r}, which holds {self.size} images")
