"""Query by example: image -> vector (exactly as the collection) -> ids -> catalogue rows.

Longer than most modules (~650 lines) because :class:`Searcher` is one
object that a server shares between threads: the query inputs it accepts,
re-ranking, filters, several examples, verification, the exclusion of the
query itself and its locks meet there. What each of those does lives in its
own module (query_inputs, filtered, examples, verified, results); what is
left is their order under one lock. Splitting the class itself is the next
step when it grows again.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, Sequence

import numpy as np

from cbir.store.dba import AugmentedVectors, searched_without_dba
from cbir.errors import ImageError, NotInIndexError, UsageError
from cbir.ann.rerank import DEFAULT_ALPHA, DEFAULT_EXPAND, check_alpha, check_expand, expand_queries
from cbir.store.directory import IndexStore, lock_holder
from cbir.store.snapshots import load_vectors
from cbir.store.locations import index_path
from cbir.store.catalogue import ImageFilter, ImageRow
from cbir.retrieval.results import Match, QueryResult
from cbir.retrieval.examples import (
    NEGATIVE_WEIGHT,
    Example,
    check_examples,
    combine_examples,
    example_files,
    example_ids,
    examples_with_features,
)
from cbir.retrieval.filtered import AllowedCache, filtered_search
from cbir.retrieval.query_inputs import QueryImage, WithFeatures, content_digest, default_name, prepare_batch
from cbir.retrieval.verified import local_config_of, rerank_matches
from cbir.retrieval.diffused import check_diffusion
from cbir.ann.verify import check_verify
from cbir.retrieval.indexed_files import ImagePage, open_indexed_file, page_of_images
from cbir.images.video import describe_frame
from cbir.timing import stage

logger = logging.getLogger(__name__)


class Searcher:
    """An index opened for queries: embedder loaded and FAISS index in memory.

    Opening costs a model load (and for deep extractors a TensorFlow import);
    each query after that costs one embedding and one search, so keep a
    ``Searcher`` open to answer many queries. One ``Searcher`` may serve many
    threads at once: images are decoded and prepared in parallel, the model
    and the catalogue are used by one thread at a time, FAISS searches run in
    parallel.
    It never writes to the index directory (a read-only one works).

    Parameters
    ----------
    store : IndexStore
        An index opened for reading (see :meth:`open`).
    nprobe, ef_search : int, optional
        Search-time knobs of IVF and HNSW indexes; the index's defaults otherwise.
    expand, alpha : int or None, float
        Alpha query expansion (:mod:`cbir.ann.rerank`): each query is searched
        again as the weighted mean of itself and its top ``expand`` results
        (``None``: one plain search). Scores are then similarities to the
        expanded query.
    verify : int, optional
        Spatial verification (:mod:`cbir.retrieval.verified`): the top
        ``verify`` results are re-ranked by the RANSAC inliers of their stored
        local features with the query's, fused with the global score. The
        index must hold local features (``cbir index --local-features``).
        Scores stay the global similarities; each checked match has ``inliers``.
    diffusion : int, optional
        Diffusion re-ranking (:mod:`cbir.retrieval.diffused`) on a graph of
        each image's ``diffusion`` nearest neighbours, built at the first
        search; scores stay the similarities to the (expanded) query.
    """

    def __init__(
        self,
        store: IndexStore,
        nprobe: int | None = None,
        ef_search: int | None = None,
        expand: int | None = DEFAULT_EXPAND,
        alpha: float = DEFAULT_ALPHA,
        verify: int | None = None,
        diffusion: int | None = None,
    ):
        check_expand(expand)
        self.diffusion = check_diffusion(diffusion)
        self._graph = None
        self._graph_lock = threading.Lock()
        check_alpha(alpha)
        self.verify = check_verify(verify)
        self.local_config = None
        if self.verify is not None:
            count, _ = store.catalogue.local_features_stats()
            self.local_config = local_config_of(store.manifest, count, store.name, store.indexed_roots())
        self._local_extractor = self.local_config.extractor() if self.local_config is not None else None
        self.store = store
        self.expand = expand
        self.alpha = alpha
        loaded = load_vectors(store)
        self.vectors = loaded.index
        self.stale_ids = loaded.stale_ids
        self._search_params = {"nprobe": nprobe, "ef_search": ef_search}
        params = dict(store.manifest.get("search_params") or {})
        params.update({k: v for k, v in self._search_params.items() if v is not None})
        self.vectors.set_search_params(params)
        self._embedder = None
        self._model_lock = threading.Lock()  # extractor runtimes (LiteRT, OpenVINO) are not thread-safe
        self._catalogue_lock = threading.Lock()  # one SQLite connection, shared
        self._augmented = AugmentedVectors.load(store, self.vectors)
        unaugmented = searched_without_dba(store)
        if unaugmented and lock_holder(store.path) is None:  # while a writer runs, this is its work in progress
            logger.warning(
                "index %r: %d image(s) committed after its last vector snapshot are searched without DBA "
                "(an interrupted or failed run); run cbir index on it again to finish",
                store.name,
                unaugmented,
            )
        if self.vectors.exact_vectors is not None:  # re-ranking: the vectors the index searches, exactly
            self.vectors.exact_vectors = self._exact_vectors
        self._allowed = AllowedCache(self._ids_matching)

    @classmethod
    def open(cls, name: str, index_dir: str | os.PathLike | None = None, **search_params) -> "Searcher":
        """Open the index ``name`` in ``index_dir`` (default: :func:`cbir.store.directory.resolve_index_dir`)."""
        return cls._open_path(index_path(name, index_dir), search_params)

    @classmethod
    def _open_path(cls, path: Path, search_params: dict) -> "Searcher":
        store = IndexStore.open(path)
        try:
            return cls(store, **search_params)
        except BaseException:
            store.close()
            raise

    def reopened(self) -> "Searcher":
        """A new ``Searcher`` on what the index holds now (what ``cbir index`` committed since).

        The loaded model is reused when the index was re-embedded with the
        same extractor and model files, so this costs a reload of the vectors
        only. This ``Searcher`` is left open and unchanged.
        """
        params = {k: v for k, v in self._search_params.items() if v is not None}
        rerank = {key: value for key, value in (("verify", self.verify), ("diffusion", self.diffusion)) if value is not None}
        fresh = self._open_path(self.store.path, {**params, **rerank})
        if self._embedder is not None and _same_model(self.store.manifest, fresh.store.manifest):
            fresh._embedder = self._embedder
            fresh._model_lock = self._model_lock
        return fresh

    def verifying(self, verify: int | None) -> "Searcher":
        """This searcher with spatial verification of the top ``verify`` results (``None``: none), sharing
        everything else (model, vectors, locks): a view for one request; close the original, not the view.

        :class:`~cbir.errors.UsageError` if ``verify`` is below 1 or the index has no local features.
        """
        verify = check_verify(verify)
        if verify == self.verify:
            return self
        view = copy.copy(self)
        view.verify = verify
        if verify is not None and view.local_config is None:
            with self._catalogue_lock:
                count, _ = self.store.catalogue.local_features_stats()
                roots = self.store.indexed_roots()
            view.local_config = local_config_of(self.store.manifest, count, self.store.name, roots)
            view._local_extractor = view.local_config.extractor()
        return view

    def close(self) -> None:
        """Close the catalogue and let go of the vectors, so a deleted or replaced snapshot frees its disk now.

        The DBA vectors are memory-mapped, and the FAISS index refers back to
        this object (re-ranking), so without this they would stay mapped until
        a garbage collection.
        """
        self.store.close()
        if self.vectors is not None:
            self.vectors.exact_vectors = None
        self.vectors = self._augmented = None

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def size(self) -> int:
        """Number of images a query can return."""
        return self.vectors.ntotal - self.stale_ids

    @property
    def augmented(self) -> bool:
        """Whether the index searches DBA-augmented vectors (:mod:`cbir.store.dba`)."""
        return self._augmented is not None

    def plain_vectors(self):
        """A new FAISS index of the original vectors, built from the catalogue (for exact-similarity work).

        The catalogue is held for the whole build: other threads' queries wait.
        """
        from cbir.ann.vectors import build_vector_index

        store = self.store
        with self._catalogue_lock:
            ids = np.array([row.id for row in store.catalogue.image_rows()], dtype=np.int64)
            sample = lambda n: store.catalogue.vectors_for_ids(ids[:: max(1, len(ids) // max(n, 1))].tolist(), store.dim)  # noqa: E731
            return build_vector_index(store.factory, store.dim, lambda: store.catalogue.iter_vectors(store.dim), sample)

    # -- the catalogue for other modules: one SQLite connection, used under the lock
    def image_rows(self, ids: Sequence[int] | None = None) -> list:
        """Catalogue rows of ``ids`` in that order (missing ones left out), or every row by id."""
        with self._catalogue_lock:
            return self.store.catalogue.image_rows(None if ids is None else [int(i) for i in ids])

    def image_metadata(self, ids: Sequence[int]) -> dict:
        """``{id: ImageMetadata}`` (size, date, camera; never the location) of those ``ids`` that have some."""
        with self._catalogue_lock:
            return self.store.catalogue.metadata([int(i) for i in ids])

    def original_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The catalogue's vectors of ``ids`` (never the DBA-augmented ones); every id must exist."""
        with self._catalogue_lock:
            return self.store.catalogue.vectors_for_ids(ids, self.store.dim)

    def iter_original_vectors(self, batch_size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` blocks of the catalogue's vectors in id order; each block read under the lock."""
        with self._catalogue_lock:
            blocks = self.store.catalogue.iter_vectors(self.store.dim, batch_size=batch_size)
        while True:
            with self._catalogue_lock:
                block = next(blocks, None)
            if block is None:
                return
            yield block

    def _ids_matching(self, image_filter: ImageFilter) -> np.ndarray:
        with self._catalogue_lock:
            return self.store.catalogue.ids_matching(image_filter)

    def ids_matching(self, image_filter: ImageFilter | None) -> np.ndarray | None:
        """Ids (ascending) of the images ``image_filter`` lets through; ``None``: no filter, every image."""
        allowed = self._allowed.get(image_filter)
        return None if allowed is None else allowed.ids

    def count_matching(self, image_filter: ImageFilter | None) -> int:
        """How many images ``image_filter`` lets through (all of them for ``None``)."""
        allowed = self._allowed.get(image_filter)
        return self.size if allowed is None else len(allowed)

    def browse(self, offset: int = 0, limit: int = 100, image_filter: ImageFilter | None = None) -> ImagePage:
        """The indexed images without a query, ``limit`` from ``offset`` on, by path (:func:`page_of_images`)."""
        with self._catalogue_lock:
            return page_of_images(self.store.catalogue, image_filter, offset, limit)

    def label_counts(self) -> dict[str, int]:
        """``{label: images}`` of every label in the index."""
        with self._catalogue_lock:
            return self.store.catalogue.label_counts()

    def cameras(self) -> list[tuple[str, int]]:
        """``(camera, images)`` of every camera in the index (make and model as one name), most images first."""
        from cbir.store.catalogue import ImageMetadata

        with self._catalogue_lock:
            counts = self.store.catalogue.camera_counts()
        named: dict[str, int] = {}
        for (make, model), count in counts.items():
            name = ImageMetadata(camera_make=make, camera_model=model).camera
            named[name] = named.get(name, 0) + count
        return sorted(named.items(), key=lambda item: (-item[1], item[0]))

    def taken_span(self) -> tuple[str | None, str | None]:
        """The first and last date taken (else modified) of the indexed images."""
        with self._catalogue_lock:
            return self.store.catalogue.taken_span()

    def folders(self) -> list[str]:
        """The folders that directly hold an indexed image, sorted (without a trailing separator)."""
        with self._catalogue_lock:
            found = self.store.catalogue.image_folders()
        return sorted({folder.rstrip(os.sep) or os.sep for folder in found})

    def search_ids(self, vectors: np.ndarray, n: int, image_filter: ImageFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of the ``n`` best (allowed) images per vector: the one FAISS call of every search."""
        allowed = self._allowed.get(image_filter)
        if allowed is None:
            return self.vectors.search(vectors, n)
        return filtered_search(self.vectors, vectors, n, allowed, self.stored_vectors)

    def ranked_ids(self, vectors: np.ndarray, n: int, image_filter: ImageFilter | None = None, exclude=()) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search_ids`, or with ``diffusion`` the diffused ranking, its seeds without ``exclude``
        (ids left out of every query's, or an array of one id per vector)."""
        if self.diffusion is None:
            return self.search_ids(vectors, n, image_filter)
        from cbir.ann.diffusion import DEFAULT_QUERY_K

        graph = self._diffusion_graph()
        per_row = isinstance(exclude, np.ndarray) and exclude.shape == (len(vectors),)
        extra = self.stale_ids + (1 if per_row else len(exclude))
        scores, ids = self.search_ids(vectors, DEFAULT_QUERY_K + extra, image_filter)
        left_out = ids == exclude[:, None] if per_row else np.isin(ids, list(exclude))
        ids = np.where(left_out, -1, ids)
        order = np.argsort(ids < 0, axis=1, kind="stable")
        ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
        allowed = self._allowed.get(image_filter)
        return graph.rank(vectors, scores, ids, n, None if allowed is None else allowed.ids)

    def _diffusion_graph(self):
        with self._graph_lock:
            if self._graph is None:
                from cbir.retrieval.diffused import DiffusionGraph

                ids = np.array([row.id for row in self.image_rows()], np.int64)
                self._graph = DiffusionGraph(ids, self.stored_vectors(ids), self.diffusion, self.name)
            return self._graph

    def skipped_files(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the files indexing skipped, by path."""
        with self._catalogue_lock:
            return self.store.catalogue.skipped()

    @property
    def embedder(self):
        if self._embedder is not None:  # loaded once, never replaced: no lock on every query
            return self._embedder
        with self._model_lock:
            if self._embedder is None:
                self._embedder = self.store.embedder()
            return self._embedder

    def _exact_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids found, their vectors)`` for re-ranking: the catalogue's, or the augmented ones under DBA."""
        with self._catalogue_lock:
            found, vectors = self.store.catalogue.vectors_by_id(ids, self.store.dim)
        if self._augmented is not None and len(found):
            augmented, hit = self._augmented.lookup(found)
            vectors = np.where(hit[:, None], augmented, vectors)
        return found, vectors

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
            with self._catalogue_lock:
                found_vectors = self.store.catalogue.vectors_for_ids(unique.tolist(), self.store.dim)
            out[wanted] = found_vectors[inverse]
        return out

    def expand_queries(
        self, vectors: np.ndarray, exclude_ids: np.ndarray | None = None, image_filter: ImageFilter | None = None
    ) -> np.ndarray:
        """αQE: each vector replaced by the weighted mean of itself and its top ``expand`` results.

        ``exclude_ids`` (one per vector, -1 for none) are left out of the
        neighbours: a query's own entry when evaluating leave-one-out.
        With ``image_filter``, the neighbours are the filtered results.
        """
        if not self.expand:
            return vectors
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        extra = self.stale_ids + (1 if exclude_ids is not None else 0)
        scores, ids = self.search_ids(vectors, self.expand + extra, image_filter)
        if self.stale_ids:
            with self._catalogue_lock:
                live = {row.id for row in self.store.catalogue.image_rows(np.unique(ids[ids >= 0]).tolist())}
            ids = np.where(np.isin(ids, list(live)), ids, -1)
        if exclude_ids is not None:
            ids = np.where(ids == np.asarray(exclude_ids)[:, None], -1, ids)
        order = np.argsort(ids < 0, axis=1, kind="stable")[:, : self.expand]  # first `expand` real results
        ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
        return expand_queries(vectors, self.stored_vectors(ids), scores, self.alpha, valid=ids >= 0)

    @property
    def local_extractor(self):
        """What computes a query's local features where this searcher verifies (else ``None``)."""
        return self._local_extractor if self.verify is not None else None

    @property
    def decode_min_side(self) -> int | None:
        """The shorter side to decode a query at: the extractor's, or more where local features need it."""
        side = self.embedder.decode_min_side
        if self.verify is not None:
            side = max(side or 0, self._local_extractor.decode_min_side)
        return side

    def local_features(self, ids: Sequence[int]) -> dict[int, bytes]:
        """``{id: packed local features}`` of those catalogue ``ids`` that have them."""
        with self._catalogue_lock:
            return self.store.catalogue.local_features(ids)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        image_filter: ImageFilter | None = None,
        exclude_ids: Sequence[int] = (),
        local_features: Sequence[Any] | None = None,
    ) -> list[list[Match]]:
        """The ``k`` best matches of each vector, best first (after query expansion, if on).

        All of them if ``k`` exceeds :attr:`size`, or the images
        ``image_filter`` lets through (:mod:`cbir.retrieval.filtered`);
        ``exclude_ids`` never come back. With ``verify`` on, ``local_features``
        (one :class:`cbir.features.local.LocalFeatures` or ``None`` per vector,
        or a list of them: a vector's several examples) re-rank each
        shortlist; without them nothing is verified.
        """
        if self.verify is None:
            return self._search_unverified(vectors, k, image_filter, exclude_ids)
        k = self._effective_k(k)
        deep = self._search_unverified(vectors, max(k, min(self.verify, self.size)), image_filter, exclude_ids)
        features = list(local_features) if local_features is not None else [None] * len(deep)
        return [rerank_matches(found, query, self.local_features, self.verify, k) for found, query in zip(deep, features)]

    def _search_unverified(self, vectors: np.ndarray, k: int, image_filter, exclude_ids) -> list[list[Match]]:
        k = self._effective_k(k)
        if image_filter is not None and not image_filter.is_empty:
            k = min(k, self.count_matching(image_filter))
        if k == 0:
            return [[] for _ in range(len(vectors))]
        excluded = {int(i) for i in exclude_ids}
        with stage("search"):
            vectors = self.expand_queries(vectors, image_filter=image_filter)
            scores, ids = self.ranked_ids(vectors, k + self.stale_ids + len(excluded), image_filter, excluded)
        wanted = np.unique(ids[ids >= 0]).tolist()
        with self._catalogue_lock, stage("catalogue"):
            rows = {row.id: row for row in self.store.catalogue.image_rows(wanted) if row.id not in excluded}
            metadata = self.store.catalogue.metadata(wanted)  # no GPS: results never carry a location
        results = []
        for score_row, id_row in zip(scores, ids):
            matches: list[Match] = []
            for score, image_id in zip(score_row, id_row):
                row = rows.get(int(image_id))
                if row is None:  # -1 padding, an excluded id, or removed since the FAISS file was written
                    continue
                about = metadata.get(row.id)
                matches.append(
                    Match(
                        len(matches) + 1, row.path, float(score), row.id, row.label, os.path.exists(row.path),
                        about.taken if about else None, about.camera if about else None, size=row.size, mtime_ns=row.mtime_ns,
                        time=row.time,
                    )
                )
                if len(matches) == k:
                    break
            results.append(matches)
        return results

    def describe(self) -> dict[str, Any]:
        """:meth:`IndexStore.describe <cbir.store.directory.IndexStore.describe>`, plus ``size``: the images a query can return."""
        with self._catalogue_lock:
            return {**self.store.describe(), "size": self.size}

    def image_row(self, image_id: int):
        """The catalogue row of ``image_id``; :class:`~cbir.errors.NotInIndexError` if there is none."""
        with self._catalogue_lock:
            rows = self.store.catalogue.image_rows([int(image_id)])
        if not rows:
            raise NotInIndexError(f"index {self.name!r} holds no image with id {image_id}")
        return rows[0]

    def open_image_file(self, image_id: int) -> tuple[ImageRow, BinaryIO]:
        """The row of ``image_id`` and its file, opened only while it is still the file that was indexed.

        See :func:`cbir.indexed_files.open_indexed_file`; raises
        :class:`~cbir.errors.NotInIndexError` (or its subclass
        :class:`~cbir.errors.IndexedFileError`) otherwise.
        """
        row = self.image_row(image_id)
        return row, open_indexed_file(row, self.indexed_roots())

    def indexed_roots(self) -> list[str]:
        """The folders indexed into this index (:meth:`IndexStore.indexed_roots <cbir.store.IndexStore.indexed_roots>`)."""
        with self._catalogue_lock:
            return self.store.indexed_roots()

    def query_id(self, image_id: int, k: int = 10, *, image_filter: ImageFilter | None = None) -> QueryResult:
        """Search with an image already in the index, by its catalogue id (its stored vector, no decoding)."""
        self._check_k(k)
        row = self.image_row(image_id)
        with self._catalogue_lock:
            vector = self.store.catalogue.vectors_for_ids([row.id], self.store.dim)
        name = describe_frame(row.path, row.time)
        if self.verify is None:
            return QueryResult(name, self.search_vectors(vector, k, image_filter=image_filter)[0], vector=vector[0])
        from cbir.features.local import unpack

        data = self.local_features([row.id]).get(row.id)
        features = [unpack(data) if data is not None else None]
        return QueryResult(name, self.search_vectors(vector, k, image_filter=image_filter, local_features=features)[0], vector=vector[0])

    def query_examples(
        self,
        positives: Sequence[Example],
        negatives: Sequence[Example] = (),
        k: int = 10,
        *,
        image_filter: ImageFilter | None = None,
        negative_weight: float = NEGATIVE_WEIGHT,
        exclude_examples: bool = False,
        channels: Literal["RGB", "BGR"] = "RGB",
        name: str | None = None,
    ) -> QueryResult:
        """One search from several examples to find and examples to avoid (:mod:`cbir.retrieval.examples`).

        Each :class:`~cbir.retrieval.examples.Example` is an image (as
        :meth:`query` takes) or an indexed image's id, with a weight.
        ``exclude_examples`` leaves the examples themselves out of the
        results: ids given, and indexed files of the same path or content.
        """
        self._check_k(k)
        check_examples(positives, negatives)
        examples = [*positives, *negatives]
        vectors, features = examples_with_features(self, examples, channels, local=self.verify is not None)
        split = len(positives)
        query = combine_examples(
            vectors[:split], [e.weight for e in positives], vectors[split:], [e.weight for e in negatives], negative_weight
        )
        excluded = example_ids(self, examples) if exclude_examples else []
        label = name if name is not None else " ".join(
            ("-" if n >= split else "") + (f"id:{e.source}" if e.is_id else default_name(e.source)) for n, e in enumerate(examples)
        )
        # Verified against each positive example (never the negatives): a match showing any of them is verified.
        found = self.search_vectors(
            query, k, image_filter=image_filter, exclude_ids=excluded, local_features=[features[:split]] if self.verify is not None else None
        )[0]
        return QueryResult(label, found, examples=example_files(self, positives), vector=query[0])

    def explain_regions(self, result: QueryResult, limit: int = 24) -> QueryResult:
        """``result`` with each unverified match among the first ``limit`` given its ``region``: where its similarity
        to the query came from (:mod:`cbir.retrieval.explained`). One model call per match."""
        from cbir.retrieval.explained import with_regions

        embedder = self.embedder
        return with_regions(result, embedder, self._model_lock, self.open_image_file, limit)

    def image_ids_for(self, paths: Sequence[str] = (), digests: Sequence[str] = ()) -> set[int]:
        """Ids of the images stored under ``paths`` (as stored) or with one of the content ``digests``."""
        wanted = set(digests)
        with self._catalogue_lock:
            ids = {image_id for image_id, digest in self.store.catalogue.content_hashes() if digest in wanted} if wanted else set()
            rows = (self.store.catalogue.row_for_path(path) for path in paths)
            return ids | {row.id for row in rows if row is not None}

    def query(
        self,
        image: QueryImage,
        k: int = 10,
        *,
        channels: Literal["RGB", "BGR"] = "RGB",
        name: str | None = None,
        image_filter: ImageFilter | None = None,
    ) -> QueryResult:
        """Search with one image.

        Parameters
        ----------
        image : str, os.PathLike, bytes or numpy.ndarray
            An image file's path; the encoded bytes of an image file (JPEG,
            PNG...: decoded by the same safe decoder as indexing); or a decoded
            ``uint8`` array of shape ``(h, w)``, ``(h, w, 3)`` or ``(h, w, 4)``
            whose channel order ``channels`` gives.
        k : int
            Number of results.
        channels : "RGB" or "BGR"
            Channel order of an array: ``"RGB"`` (Pillow, Matplotlib, imageio)
            or ``"BGR"`` (``cv2.imread``). Ignored for paths and bytes.
        name : str, optional
            What :attr:`QueryResult.query` says; the path for a file, else
            ``"<bytes>"`` or ``"<array>"``.
        image_filter : ImageFilter, optional
            Only images it lets through are returned (a folder, a label).

        Raises
        ------
        TypeError
            For any other kind of ``image``.
        ImageError
            For a file or bytes that cannot be decoded, or an array that is not an image.
        """
        return self.query_many([image], k, channels=channels, names=None if name is None else [name], image_filter=image_filter)[0]

    def query_many(
        self,
        images: Sequence[QueryImage],
        k: int = 10,
        on_error: Callable[[str, ImageError], None] | None = None,
        batch_size: int = 32,
        *,
        channels: Literal["RGB", "BGR"] = "RGB",
        names: Sequence[str] | None = None,
        image_filter: ImageFilter | None = None,
    ) -> list[QueryResult]:
        """Search with several images (paths, bytes or arrays, see :meth:`query`), batch by batch.

        Returns one result per readable image, in order. An image that cannot
        be read raises :class:`~cbir.errors.ImageError`, unless
        ``on_error(name, error)`` is given: then it is reported there and left out.
        """
        self._check_k(k)
        if channels not in ("RGB", "BGR"):
            raise UsageError(f"channels must be 'RGB' or 'BGR', got {channels!r}")
        if isinstance(images, (str, bytes, bytearray, memoryview, np.ndarray, os.PathLike)):
            raise TypeError("Searcher.query_many takes a sequence of images; use Searcher.query for one image")
        images = list(images)
        labels = [default_name(image) for image in images] if names is None else [str(n) for n in names]
        if len(labels) != len(images):
            raise UsageError(f"{len(labels)} names for {len(images)} images")
        results = []
        for start in range(0, len(images), batch_size):
            readable, prepared = [], []
            batch = images[start : start + batch_size]
            for label, (item, error) in zip(labels[start : start + batch_size], self._prepare_batch(batch, channels)):
                if error is not None:
                    if on_error is None:
                        raise error
                    on_error(label, error)
                    continue
                prepared.append(item)
                readable.append(label)
            if prepared:
                results.extend(self.query_prepared(prepared, k, readable, image_filter=image_filter))
        return results

    def prepare(self, image: QueryImage, *, channels: Literal["RGB", "BGR"] = "RGB") -> Any:
        """The per-image half of a query: ``image`` (see :meth:`query`) decoded and made ready for the model.

        Safe to run in many threads at once; :meth:`query_prepared` then
        embeds and searches several prepared images in one batch.
        Raises :class:`~cbir.errors.ImageError` for an unreadable image.
        """
        item, error = self._prepare_batch([image], channels)[0]
        if error is not None:
            raise error
        return item

    def _prepare_batch(self, images: Sequence[QueryImage], channels: str) -> list[tuple[Any, ImageError | None]]:
        """:func:`~cbir.retrieval.query_inputs.prepare_batch`; with ``verify`` each item carries the query's local features."""
        return prepare_batch(images, channels, self.embedder, self.local_extractor)

    def query_prepared(
        self, items: Sequence[Any], k: int = 10, names: Sequence[str] | None = None, *, image_filter: ImageFilter | None = None
    ) -> list[QueryResult]:
        """The batched half of a query: items from :meth:`prepare`, embedded in one model call and searched together."""
        names = ["<prepared>"] * len(items) if names is None else list(names)
        vectors = self.embed_prepared(items)
        if self.verify is None:
            found = self.search_vectors(vectors, k, image_filter=image_filter)
        else:
            features = [item.features if isinstance(item, WithFeatures) else None for item in items]
            found = self.search_vectors(vectors, k, image_filter=image_filter, local_features=features)
        return [QueryResult(name, matches, vector=vector) for name, matches, vector in zip(names, found, vectors)]

    def embed_prepared(self, items: Sequence[Any]) -> np.ndarray:
        """Vectors of items from :meth:`prepare`, in one model call."""
        items = [item.item if isinstance(item, WithFeatures) else item for item in items]
        embedder = self.embedder  # outside the lock, which loading the model takes
        with self._model_lock, stage("embed"):
            return embedder.transform_prepared(items)

    def _check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")

    def _effective_k(self, k: int) -> int:
        """``k``, or the whole collection when ``k`` is larger (said once per ``Searcher``)."""
        self._check_k(k)
        if k <= self.size:
            return k
        if not getattr(self, "_said_k", False):
            self._said_k = True
            logger.warning("k=%d is larger than index %r, which holds %d images: returning all of them", k, self.store.name, self.size)
        return self.size

    def query_excluding_self(
        self,
        images: Sequence[QueryImage],
        k: int = 10,
        on_error: Callable[[str, ImageError], None] | None = None,
        *,
        channels: Literal["RGB", "BGR"] = "RGB",
        names: Sequence[str] | None = None,
        image_filter: ImageFilter | None = None,
    ) -> list[QueryResult]:
        """:meth:`query_many`, leaving out each query's own file and byte-identical copies of it.

        A query file that is in the index would otherwise come back first with
        score 1.0, as would its copies; the ``k`` results are the next ones.
        Copies are found by content hash: of the file for a path, of the bytes
        for encoded bytes (an array has no file: only an equal path is left out).
        """
        self._effective_k(k)  # says so if k exceeds the collection
        images = list(images)
        labels = [default_name(image) for image in images] if names is None else [str(n) for n in names]
        digest_of = dict(zip(labels, (content_digest(image) for image in images)))
        margin = 8
        while True:
            wanted = min(k + margin, self.size)
            results = self.query_many(images, wanted, on_error=on_error, channels=channels, names=labels, image_filter=image_filter)
            ids = sorted({m.id for result in results for m in result.results})
            with self._catalogue_lock:
                sha_of = {row.id: row.sha256 for row in self.store.catalogue.image_rows(ids)}
            kept = [
                [m for m in r.results if m.path != r.query and (digest_of.get(r.query) is None or sha_of.get(m.id) != digest_of[r.query])]
                for r in results
            ]
            # Too many copies of a query ate the margin: search again, deeper.
            if wanted >= self.size or all(len(found) >= k for found in kept):
                break
            margin *= 4
            on_error = None if on_error is None else (lambda label, exc: None)  # reported once already
        return [
            replace(result, results=[replace(m, rank=n) for n, m in enumerate(found[:k], start=1)])
            for result, found in zip(results, kept)
        ]


def _same_model(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return old.get("embedder") == new.get("embedder") and old.get("model_files") == new.get("model_files")


