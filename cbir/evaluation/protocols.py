"""Evaluation protocols: which images query, what counts as relevant, searched the way queries are.

* **leave-one-out** (labels): every image queries all the others; relevant =
  same label.
* **first-of-group** (labels, Holidays style): the first image (by path) of
  each label queries; relevant = the other images of its label; the query is
  removed from its own ranking, the rest of the collection stays.
* **query folder** (queries from outside the collection): every image under
  a folder queries the index; its label is its folder name; relevant =
  indexed images with that label.
* **ground truth** (Oxford/Paris style): a CSV of ``query,relevant[,kind]``
  rows (see :func:`read_ground_truth`); ``junk`` images are removed from the
  ranking, ``good`` and ``ok`` are relevant. A query may be in the collection
  (removed from its own ranking) or outside it (embedded like any query).

The metrics themselves are pure functions in :mod:`cbir.evaluation.metrics`. Library
warnings (rows naming images that are not indexed, unreadable queries) go to
``logging`` and into the report's ``notes``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir.errors import ImageError, LabelsError, NoImagesError, UsageError
from cbir.evaluation.groundtruth import GroundTruth, read_ground_truth
from cbir.evaluation.metrics import (
    DEFAULT_KS,
    Accumulator,
    EvaluationReport,
    without_self,
)
from cbir.ann.rerank import DEFAULT_ALPHA, DEFAULT_EXPAND

logger = logging.getLogger(__name__)

PROTOCOLS = ("leave-one-out", "first-of-group")


def leave_one_out(
    search: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    labels: Sequence,
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int = 256,
    progress: Callable[[int], None] | None = None,
    query_rows: np.ndarray | None = None,
    protocol: str = "leave-one-out",
) -> EvaluationReport:
    """Queries taken from a labelled collection, each removed from its own ranking.

    Parameters
    ----------
    search : callable
        ``search(query_rows) -> (len(query_rows), m)`` array of row numbers
        ranked best first (-1 padded); it may include the query itself, which
        is removed here.
    n_items : int
        Number of items.
    labels : sequence of length ``n_items``
    block_size : int
        Queries per call of ``search``, bounding memory to ``block_size * m``.
    progress : callable, optional
        Called with the number of queries done after each block.
    query_rows : int array, optional
        The rows that query (default: every row).
    """
    labels = np.asarray(labels)
    if len(labels) != n_items:
        raise ValueError(f"{len(labels)} labels for {n_items} items")
    query_rows = np.arange(n_items) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    accumulator = Accumulator(ks)
    for start in range(0, len(query_rows), block_size):
        rows = query_rows[start : start + block_size]
        ranked = np.asarray(search(rows), dtype=np.int64)
        accumulator.add_labelled(labels, rows, without_self(ranked, rows))
        if progress is not None:
            progress(len(rows))
    return accumulator.report(protocol)


def first_of_group(paths: Sequence[str], labels: Sequence) -> np.ndarray:
    """Rows of the first image (by path) of each label: the Holidays-style designated queries."""
    first: dict[str, tuple[str, int]] = {}
    for row, (path, label) in enumerate(zip(paths, labels)):
        if label is None:
            continue  # an image without a label is never a query
        if label not in first or path < first[label][0]:
            first[label] = (path, row)
    return np.array(sorted(row for _path, row in first.values()), dtype=np.int64)


def exact_search(vectors: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A ``search`` for :func:`leave_one_out`: full inner-product ranking of ``vectors``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(query_rows: np.ndarray) -> np.ndarray:
        scores = vectors[query_rows] @ vectors.T
        return np.argsort(-scores, axis=1, kind="stable")

    return search


def evaluate_vectors(vectors: np.ndarray, labels: Sequence, ks: Sequence[int] = DEFAULT_KS) -> EvaluationReport:
    """Leave-one-out evaluation of L2-normalised vectors under cosine similarity."""
    vectors = np.asarray(vectors)
    return leave_one_out(exact_search(vectors), len(vectors), labels, ks)


# -- stored indexes ------------------------------------------------------------
def evaluate_index(
    name: str,
    index_dir=None,
    labels=None,
    ks: Sequence[int] = DEFAULT_KS,
    progress=None,
    *,
    protocol: str = "leave-one-out",
    ground_truth: str | os.PathLike | GroundTruth | None = None,
    query_folder: str | os.PathLike | None = None,
    expand: int | None = DEFAULT_EXPAND,
    alpha: float = DEFAULT_ALPHA,
    image_filter=None,
    verify: int | None = None,
    **search_params,
) -> EvaluationReport:
    """Evaluate a stored index, searched the way queries are (query expansion included).

    ``image_filter`` (:class:`~cbir.store.catalogue.ImageFilter`) evaluates
    the part of the collection it lets through, as if it were the whole one:
    its images query, filtered searches rank only them.

    Labels come from ``labels`` if given (a ``{path: label}`` mapping or a
    CSV path, see :func:`cbir.images.labels.read_labels_csv`), else from the
    catalogue (folder names at indexing time). ``protocol`` is
    ``leave-one-out`` or ``first-of-group``; ``ground_truth`` (a CSV, see
    :func:`read_ground_truth`) or ``query_folder`` choose the other protocols.

    Raises
    ------
    LabelsError
        If the labels do not fit the index, or no label has two images.
    """
    from cbir.progress import SILENT
    from cbir.retrieval.search import Searcher

    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r} (use {' or '.join(PROTOCOLS)})")
    if ground_truth is not None and query_folder is not None:
        raise UsageError("give a ground-truth file or a query folder, not both")
    progress = progress or SILENT
    with Searcher.open(name, index_dir, expand=expand, alpha=alpha, verify=verify, **search_params) as searcher:
        ranker = _Ranker(searcher, image_filter)
        if not len(ranker.paths):
            if image_filter is not None and not image_filter.is_empty:
                raise NoImagesError(f"no image of index {name!r} is {image_filter.describe()}: there is nothing to evaluate")
            raise NoImagesError(f"index {name!r} is empty: there is nothing to evaluate (cbir index FOLDER adds images)")
        if ground_truth is not None:
            truth = ground_truth if isinstance(ground_truth, GroundTruth) else read_ground_truth(ground_truth)
            return _evaluate_ground_truth(ranker, truth, ks, progress)
        index_labels = _index_labels(ranker, labels)
        if query_folder is not None:
            return _evaluate_query_folder(ranker, index_labels, query_folder, ks, progress)
        _check_label_groups(index_labels, given=labels is not None)
        if protocol == "first-of-group":
            query_rows = first_of_group(ranker.paths, index_labels)
        else:  # an image without a label is never a query (it stays in the rankings)
            query_rows = np.array([n for n, label in enumerate(index_labels) if label is not None], dtype=np.int64)
        total = len(query_rows)
        progress.start("evaluating", total)
        try:
            report = leave_one_out(
                lambda rows: ranker.rank(ranker.stored(rows), exclude_ids=ranker.ids[rows], features=ranker.stored_features(rows)),
                len(ranker.ids),
                _never_relevant(index_labels),
                ks,
                progress=progress.advance,
                query_rows=query_rows,
                protocol=protocol,
            )
        finally:
            progress.stop()
        return report


def _counts(labels: Sequence) -> dict:
    """Images per label (images without a label are not counted)."""
    counts: dict = defaultdict(int)
    for label in labels:
        if label is not None:
            counts[label] += 1
    return counts


def _never_relevant(labels: Sequence) -> list[str]:
    """Labels with a class of its own for each unlabelled image: never relevant to another."""
    return [f"\0unlabelled-{n}" if label is None else label for n, label in enumerate(labels)]


def _check_label_groups(labels: Sequence, given: bool) -> None:
    counts = _counts(labels)
    if len(counts) < 2:
        source = "the labels given" if given else "their folder name"
        which = f"the same label {next(iter(counts))!r}" if counts else "no label"
        raise LabelsError(
            f"every indexed image has {which} (from {source}); "
            "evaluation needs at least two classes: give a labels CSV (--labels)"
        )
    if all(count < 2 for count in counts.values()):
        raise LabelsError(
            f"no label has two images ({sum(counts.values())} images, {len(counts)} labels): "
            "nothing can be found for any query; give a labels CSV (--labels) that groups images"
        )


class _Ranker:
    """Full rankings (row numbers into the catalogue's image rows) from an open :class:`~cbir.retrieval.search.Searcher`."""

    def __init__(self, searcher, image_filter=None):
        self.searcher = searcher
        self.image_filter = image_filter
        allowed = searcher.ids_matching(image_filter)
        self.rows = searcher.image_rows() if allowed is None else searcher.image_rows(allowed)
        self.paths = [row.path for row in self.rows]
        self.ids = np.array([row.id for row in self.rows], dtype=np.int64)  # ascending: rows come in id order
        self.row_of_path = {path: n for n, path in enumerate(self.paths)}

    def stored(self, rows: np.ndarray) -> np.ndarray:
        """The original (catalogue) vectors of ``rows``: an indexed image queries as itself."""
        return self.searcher.original_vectors(self.ids[rows].tolist())

    def stored_features(self, rows: np.ndarray) -> list | None:
        """The stored local features of ``rows`` where the searcher verifies (``None`` per row without)."""
        if self.searcher.verify is None:
            return None
        from cbir.features.local import unpack

        ids = self.ids[rows].tolist()
        records = self.searcher.local_features(ids)
        return [unpack(records[i]) if i in records else None for i in ids]

    def rank(self, vectors: np.ndarray, exclude_ids: np.ndarray | None = None, features: list | None = None) -> np.ndarray:
        searcher = self.searcher
        vectors = searcher.expand_queries(vectors, exclude_ids, self.image_filter)
        scores, found = searcher.search_ids(vectors, len(self.ids) + searcher.stale_ids, self.image_filter)
        if searcher.verify is not None and features is not None:
            found = self._verified(found, scores, exclude_ids, features)
        position = np.clip(np.searchsorted(self.ids, found), 0, len(self.ids) - 1)
        return np.where(self.ids[position] == found, position, -1)

    def _verified(self, found: np.ndarray, scores: np.ndarray, exclude_ids, features: list) -> np.ndarray:
        """Each ranking's first ``verify`` real results (the query's own entry left where it is) re-ordered."""
        from cbir.retrieval.verified import verify_shortlist

        found = found.copy()
        for n, query in enumerate(features):
            if query is None:
                continue
            own = exclude_ids[n] if exclude_ids is not None else -2
            slots = np.flatnonzero((found[n] >= 0) & (found[n] != own))[: self.searcher.verify]
            order, _ = verify_shortlist(query, found[n, slots].tolist(), scores[n, slots], self.searcher.local_features)
            found[n, slots] = found[n, slots][order]
        return found

    def embed(self, paths: Sequence[str], on_error: Callable[[str, ImageError], None]) -> tuple[list[str], np.ndarray]:
        from cbir.images.decode import read_image

        embedder = self.searcher.embedder
        readable, images = [], []
        for path in paths:
            try:
                images.append(read_image(path, min_side=embedder.decode_min_side))
                readable.append(path)
            except ImageError as exc:
                on_error(path, exc)
        local = self.searcher.local_extractor
        self.last_features = [local.features(read_image(p, min_side=local.decode_min_side)) for p in readable] if local else None
        if not images:
            return readable, np.zeros((0, self.searcher.store.dim), np.float32)
        return readable, embedder.transform(images)


def _index_labels(ranker: _Ranker, labels) -> list[str | None]:
    """Every indexed image's label, ``None`` for an image without one (see :func:`cbir.images.labels.assign_labels`)."""
    from cbir.images.labels import as_label_table, assign_labels

    if labels is not None:
        skipped = [path for path, _reason in ranker.searcher.skipped_files()]
        return assign_labels(as_label_table(labels), ranker.paths, skipped)
    found = [row.label for row in ranker.rows]
    unlabelled = sum(label is None for label in found)
    if unlabelled:
        logger.warning("%d indexed image(s) have no label (never a query, never relevant)", unlabelled)
    return found


def _unreadable_warner(notes: list[str]) -> Callable[[str, ImageError], None]:
    def warn(path: str, exc: ImageError) -> None:
        logger.warning("skipped query %s", exc)
        notes.append(f"skipped unreadable query {path}")

    return warn


def _evaluate_query_folder(ranker: _Ranker, index_labels: list[str], folder, ks, progress, block: int = 64):
    from cbir.images.scan import find_images

    folder = Path(folder)
    paths = [str(p) for p in find_images(folder)] if folder.is_dir() else []
    if not paths:
        raise UsageError(f"no query images under {folder}")
    labels = np.asarray(index_labels, dtype=object)
    accumulator, notes = Accumulator(ks), []
    counts = _counts(index_labels)
    progress.start("evaluating", len(paths))
    try:
        for start in range(0, len(paths), block):
            readable, vectors = ranker.embed(paths[start : start + block], _unreadable_warner(notes))
            if len(readable):
                query_labels = np.array([Path(p).parent.name for p in readable], dtype=object)
                ranked = ranker.rank(vectors, features=ranker.last_features)
                relevant = (ranked >= 0) & (labels[np.where(ranked >= 0, ranked, 0)] == query_labels[:, None])
                n_relevant = np.array([counts.get(label, 0) for label in query_labels])
                accumulator.add(relevant, n_relevant, query_labels.astype(str), query_in_collection=False)
            progress.advance(len(paths[start : start + block]))
    finally:
        progress.stop()
    report = accumulator.report("query-folder")
    report.notes = notes
    return report


def _evaluate_ground_truth(ranker: _Ranker, truth: GroundTruth, ks, progress) -> EvaluationReport:
    notes: list[str] = []
    named = set().union(*truth.relevant.values(), *truth.junk.values())
    missing = sorted(p for p in named if p not in ranker.row_of_path)
    if missing:
        message = f"{len(missing)} image(s) named in the ground truth are not in the index (e.g. {missing[0]}); they are left out"
        logger.warning(message)
        notes.append(message)
    accumulator = Accumulator(ks)
    progress.start("evaluating", len(truth.queries))
    try:
        for query in truth.queries:
            row = ranker.row_of_path.get(query)
            if row is None:
                readable, vector = ranker.embed([query], _unreadable_warner(notes))
                if not readable:
                    progress.advance()
                    continue
                ranked = ranker.rank(vector, features=ranker.last_features)[0]
            else:
                rows = np.array([row])
                ranked = ranker.rank(ranker.stored(rows), exclude_ids=ranker.ids[rows], features=ranker.stored_features(rows))[0]
            relevant_rows = {ranker.row_of_path[p] for p in truth.relevant.get(query, ()) if p in ranker.row_of_path}
            junk_rows = {ranker.row_of_path[p] for p in truth.junk.get(query, ()) if p in ranker.row_of_path}
            relevant_rows.discard(row)
            kept = [r for r in ranked.tolist() if r >= 0 and r != row and r not in junk_rows]
            flags = np.array([[r in relevant_rows for r in kept]], dtype=bool).reshape(1, len(kept))
            accumulator.add(flags, np.array([len(relevant_rows)]), [Path(query).stem], query_in_collection=row is not None)
            progress.advance()
    finally:
        progress.stop()
    report = accumulator.report("ground-truth")
    report.notes = notes
    return report


def evaluate_indexes(names: Sequence[str], index_dir=None, **options) -> tuple[dict[str, EvaluationReport], list[str]]:
    """:func:`evaluate_index` on each index in turn (each with its own extractor), for one comparison.

    Returns the reports by name, and notes: a warning if the indexes do not
    hold the same images (their figures are then not strictly comparable).
    """
    from cbir.store.directory import IndexStore
    from cbir.store.locations import index_path

    if len(set(names)) != len(names):
        raise UsageError("the same --name is given twice")
    notes: list[str] = []
    image_sets = {}
    for name in names:
        with IndexStore.open(index_path(name, index_dir)) as store:
            image_sets[name] = {row.path for row in store.catalogue.image_rows()}
    first = names[0]
    for name in names[1:]:
        if image_sets[name] != image_sets[first]:
            only_first, only_other = len(image_sets[first] - image_sets[name]), len(image_sets[name] - image_sets[first])
            message = (
                f"indexes {first!r} and {name!r} hold different images ({only_first} only in {first!r}, "
                f"{only_other} only in {name!r}): each is evaluated on its own images"
            )
            logger.warning(message)
            notes.append(message)
    reports = {name: evaluate_index(name, index_dir, **options) for name in names}
    return reports, notes
