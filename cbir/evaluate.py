"""Retrieval metrics: pure functions over rankings, and leave-one-out evaluation.

The single-query functions take a ranked list of relevance flags (``True`` =
relevant) and are written for clarity; :func:`evaluate_rankings` computes the
same numbers for many queries at once with numpy. Protocol of
:func:`leave_one_out`: every item is a query, the query itself is removed from
its own ranking, relevant = same label, AP over the full ranking of the other
``N - 1`` items.

Empty cases, spelled out: P@k divides by ``k`` even when fewer than ``k``
results exist; a query with no relevant item in the collection has undefined
recall and AP and is left out of every mean (counted in
``queries_without_relevant``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10, 20, 50)
PER_CLASS_K = 10


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """Fraction of the first ``k`` results that are relevant."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return float(sum(bool(r) for r in list(relevant)[:k])) / k


def recall_at_k(relevant: Sequence[bool], k: int, n_relevant: int) -> float:
    """Fraction of all ``n_relevant`` relevant items found in the first ``k`` results."""
    if n_relevant <= 0:
        raise ValueError("recall is undefined without relevant items")
    return float(sum(bool(r) for r in list(relevant)[:k])) / n_relevant


def average_precision(relevant: Sequence[bool], n_relevant: int) -> float:
    """Mean of P@rank over the ranks of relevant results, divided by all ``n_relevant``.

    Relevant items missing from ``relevant`` (not retrieved) count as zero.
    """
    if n_relevant <= 0:
        raise ValueError("average precision is undefined without relevant items")
    hits, total = 0, 0.0
    for rank, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            hits += 1
            total += hits / rank
    return total / n_relevant


@dataclass
class EvaluationReport:
    """Means over queries of P@k, R@k and AP, with per-class P@10 and mAP."""

    n_queries: int
    map: float
    precision: dict[int, float]
    recall: dict[int, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    queries_without_relevant: int = 0

    def to_dict(self) -> dict:
        """JSON-ready form; k keys become strings (``"10"``) as JSON requires."""
        return {
            "n_queries": self.n_queries,
            "queries_without_relevant": self.queries_without_relevant,
            "map": self.map,
            "precision": {str(k): v for k, v in self.precision.items()},
            "recall": {str(k): v for k, v in self.recall.items()},
            "per_class": self.per_class,
        }


class _Accumulator:
    """Sums per-query metrics block by block, so big collections never need N x N memory."""

    def __init__(self, labels: np.ndarray, ks: Sequence[int]):
        self.labels = labels
        self.ks = tuple(ks)
        self.class_names, self.class_of = np.unique(labels, return_inverse=True)
        self.class_sizes = np.bincount(self.class_of)
        self.ap: list[np.ndarray] = []
        self.precision: dict[int, list[np.ndarray]] = {k: [] for k in self.ks}
        self.recall: dict[int, list[np.ndarray]] = {k: [] for k in self.ks}
        self.query_classes: list[np.ndarray] = []
        self.without_relevant = 0

    def add(self, query_rows: np.ndarray, ranked_rows: np.ndarray) -> None:
        """``ranked_rows[i]``: row numbers ranked for query ``query_rows[i]``, -1 padded, query excluded."""
        query_class = self.class_of[query_rows]
        valid = ranked_rows >= 0
        relevant = valid & (self.class_of[np.where(valid, ranked_rows, 0)] == query_class[:, None])
        n_relevant = self.class_sizes[query_class] - 1
        keep = n_relevant > 0
        self.without_relevant += int((~keep).sum())
        relevant, n_relevant, query_class = relevant[keep], n_relevant[keep], query_class[keep]
        hits = np.cumsum(relevant, axis=1)
        ranks = np.arange(1, relevant.shape[1] + 1)
        self.ap.append((relevant * (hits / ranks)).sum(axis=1) / n_relevant)
        for k in self.ks:
            found = hits[:, min(k, hits.shape[1]) - 1] if hits.shape[1] else np.zeros(len(hits))
            self.precision[k].append(found / k)
            self.recall[k].append(found / n_relevant)
        self.query_classes.append(query_class)

    def report(self) -> EvaluationReport:
        ap = np.concatenate(self.ap) if self.ap else np.zeros(0)
        classes = np.concatenate(self.query_classes) if self.query_classes else np.zeros(0, dtype=int)
        precision = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.precision.items()}
        recall = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.recall.items()}
        per_class = {}
        class_k = PER_CLASS_K if PER_CLASS_K in precision else None
        for index, name in enumerate(self.class_names):
            chosen = classes == index
            if not chosen.any():
                continue
            entry = {"n": int(chosen.sum()), "map": _mean(ap[chosen])}
            if class_k is not None:
                entry[f"precision@{class_k}"] = _mean(precision[class_k][chosen])
            per_class[str(name)] = entry
        return EvaluationReport(
            n_queries=int(len(ap)),
            map=_mean(ap),
            precision={k: _mean(v) for k, v in precision.items()},
            recall={k: _mean(v) for k, v in recall.items()},
            per_class=per_class,
            queries_without_relevant=self.without_relevant,
        )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def evaluate_rankings(
    rankings: np.ndarray, labels: Sequence, ks: Sequence[int] = DEFAULT_KS, query_rows: np.ndarray | None = None
) -> EvaluationReport:
    """Metrics for precomputed rankings.

    Parameters
    ----------
    rankings : (n_queries, m) int array
        Row numbers into ``labels`` in ranked order, -1 for "no result"; the
        query itself must already be excluded.
    labels : sequence of length N
        Label of every item.
    query_rows : (n_queries,) int array, optional
        Which item each ranking belongs to; defaults to ``0..n_queries-1``.
    """
    labels = np.asarray(labels)
    rankings = np.asarray(rankings, dtype=np.int64)
    if query_rows is None:
        query_rows = np.arange(len(rankings))
    accumulator = _Accumulator(labels, ks)
    accumulator.add(np.asarray(query_rows), rankings)
    return accumulator.report()


def leave_one_out(
    search: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    labels: Sequence,
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> EvaluationReport:
    """Leave-one-out evaluation driven by a search function.

    Parameters
    ----------
    search : callable
        ``search(query_rows) -> (len(query_rows), m)`` array of row numbers
        ranked best first (-1 padded); it may include the query itself, which
        is removed here.
    n_items : int
        Number of items; every one is used as a query.
    labels : sequence of length ``n_items``
    block_size : int
        Queries per call of ``search``, bounding memory to ``block_size * m``.
    progress : callable, optional
        Called with the number of queries done after each block.
    """
    labels = np.asarray(labels)
    if len(labels) != n_items:
        raise ValueError(f"{len(labels)} labels for {n_items} items")
    accumulator = _Accumulator(labels, ks)
    for start in range(0, n_items, block_size):
        query_rows = np.arange(start, min(start + block_size, n_items))
        ranked = np.asarray(search(query_rows), dtype=np.int64)
        accumulator.add(query_rows, _without_self(ranked, query_rows))
        if progress is not None:
            progress(len(query_rows))
    return accumulator.report()


def _without_self(ranked: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Replace each query's own row by -1 padding at the end, keeping the order of the rest."""
    dropped = (ranked == query_rows[:, None]) | (ranked < 0)
    order = np.argsort(dropped, axis=1, kind="stable")
    reordered = np.take_along_axis(ranked, order, axis=1)
    reordered[np.take_along_axis(dropped, order, axis=1)] = -1
    return reordered


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


def evaluate_index(
    name: str,
    index_dir=None,
    labels=None,
    ks: Sequence[int] = DEFAULT_KS,
    progress=None,
    **search_params,
) -> EvaluationReport:
    """Leave-one-out evaluation of a stored index, searched the way queries are.

    Labels come from ``labels`` if given (a ``{path: label}`` mapping or a
    CSV path, see :func:`cbir.labels.read_labels_csv`), else from the
    catalogue (folder names at indexing time). Approximate indexes are evaluated as they search.

    Raises
    ------
    LabelsError
        If the labels do not fit the index, or every image has the same label.
    """
    from cbir.errors import LabelsError
    from cbir.labels import as_label_table, assign_labels
    from cbir.progress import SILENT
    from cbir.search import Searcher

    progress = progress or SILENT
    with Searcher.open(name, index_dir, **search_params) as searcher:
        catalogue = searcher.store.catalogue
        rows = catalogue.image_rows()
        paths = [row.path for row in rows]
        given = labels is not None
        if given:
            skipped = [path for path, _reason in catalogue.skipped()]
            labels = assign_labels(as_label_table(labels), paths, skipped)
        else:
            labels = [row.label for row in rows]
            unlabelled = sum(label is None for label in labels)
            if unlabelled:
                logger.warning("%d indexed image(s) have no label (never a query, never relevant)", unlabelled)
        named = {label for label in labels if label is not None}
        if len(named) < 2:
            source = "the labels given" if given else "their folder name"
            which = f"the same label {next(iter(named))!r}" if named else "no label"
            raise LabelsError(
                f"every indexed image has {which} (from {source}); "
                "evaluation needs at least two classes: give a labels CSV (--labels)"
            )
        unlabelled = sum(label is None for label in labels)
        # A class of its own per unlabelled image: never a query (no other
        # member) and never relevant to another, yet still ranked.
        labels = [f"\0unlabelled-{n}" if label is None else label for n, label in enumerate(labels)]
        ids = np.array([row.id for row in rows], dtype=np.int64)  # ascending: rows come in id order
        dim, vector_index = searcher.store.dim, searcher.vectors
        k = len(ids) + searcher.stale_ids

        def search(query_rows: np.ndarray) -> np.ndarray:
            queries = catalogue.vectors_for_ids(ids[query_rows], dim)
            _scores, found = vector_index.search(queries, k)
            position = np.clip(np.searchsorted(ids, found), 0, len(ids) - 1)
            return np.where(ids[position] == found, position, -1)

        progress.start("evaluating", len(ids))
        try:
            report = leave_one_out(search, len(ids), labels, ks, progress=progress.advance)
        finally:
            progress.stop()
        report.queries_without_relevant -= unlabelled
        return report
