"""Query by example: image -> vector (exactly as the collection) -> ids -> catalogue rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cbir.errors import ImageError, UsageError
from cbir.images import normalize_path, read_image
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
    """

    def __init__(self, store: IndexStore, nprobe: int | None = None, ef_search: int | None = None):
        self.store = store
        loaded = store.load_vectors()
        self.vectors = loaded.index
        self.stale_ids = loaded.stale_ids
        params = dict(store.manifest.get("search_params") or {})
        params.update({k: v for k, v in {"nprobe": nprobe, "ef_search": ef_search}.items() if v is not None})
        self.vectors.set_search_params(params)
        self._embedder = None

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
    def embedder(self):
        if self._embedder is None:
            self._embedder = self.store.embedder()
        return self._embedder

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Match]]:
        """The ``k`` best matches of each vector, best first."""
        self._check_k(k)
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
