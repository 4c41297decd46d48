"""Retrieval metrics: pure functions over rankings, and their means over many queries.

The single-query functions take a ranked list of relevance flags (``True`` =
relevant) and are written for clarity; :class:`Accumulator` computes the same
numbers for many queries at once with numpy, block by block, so big
collections never need N x N memory.

Empty cases, spelled out: P@k divides by ``k`` even when fewer than ``k``
results exist; a query with no relevant item has undefined recall and AP and
is left out of every mean (counted in ``queries_without_relevant``); a mean
over no query is 0.0.

N-S score (Nistér and Stewénius, UKBench): the number of images of the
query's group of 4 among the first 4 results of a search *that includes the
query itself*, averaged over queries (0 to 4). For a query taken from the
collection (removed from its own ranking) that is ``1 + hits in the top 3``,
for a query from outside ``hits in the top 4``. Reported only when every
query's group has exactly 4 members.

Precision-recall curve: for each query, interpolated precision at recall
``r`` = the best precision at any rank whose recall is at least ``r``, at
:data:`RECALL_LEVELS`; the curve is the mean over queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50)
PER_CLASS_K = 10
NS_GROUP = 4
RECALL_LEVELS = np.linspace(0.0, 1.0, 21)


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


def ns_score(relevant: Sequence[bool], query_in_collection: bool) -> float:
    """UKBench N-S score of one query (see the module docstring): 0 to 4."""
    top = NS_GROUP - 1 if query_in_collection else NS_GROUP
    return float(query_in_collection) + float(sum(bool(r) for r in list(relevant)[:top]))


def interpolated_precision(relevant: Sequence[bool], n_relevant: int, levels=RECALL_LEVELS) -> np.ndarray:
    """Interpolated precision of one query at each recall level (0 where a level is never reached)."""
    if n_relevant <= 0:
        raise ValueError("precision-recall is undefined without relevant items")
    flags = np.asarray(list(relevant), dtype=bool)
    hits = np.cumsum(flags)
    precision = hits / np.arange(1, len(flags) + 1) if len(flags) else np.zeros(0)
    return _interpolate(hits, precision, n_relevant, np.asarray(levels))


def _interpolate(hits: np.ndarray, precision: np.ndarray, n_relevant: int, levels: np.ndarray) -> np.ndarray:
    best_after = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    # First rank whose recall reaches each level (hits are non-decreasing).
    first = np.searchsorted(hits, levels * n_relevant - 1e-9, side="left")
    first = np.maximum(first, 0)
    out = np.zeros(len(levels))
    reached = first < len(hits)
    out[reached] = best_after[first[reached]]
    return out


@dataclass
class EvaluationReport:
    """Means over queries of P@k, R@k and AP, per-class P@10 and AP, N-S and the PR curve."""

    n_queries: int
    map: float
    precision: dict[int, float]
    recall: dict[int, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    queries_without_relevant: int = 0
    ns_score: float | None = None
    pr_curve: list[float] = field(default_factory=list)
    protocol: str = "leave-one-out"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form; k keys become strings (``"10"``) as JSON requires."""
        return {
            "protocol": self.protocol,
            "n_queries": self.n_queries,
            "queries_without_relevant": self.queries_without_relevant,
            "map": self.map,
            "precision": {str(k): v for k, v in self.precision.items()},
            "recall": {str(k): v for k, v in self.recall.items()},
            "ns_score": self.ns_score,
            "per_class": self.per_class,
            "pr_curve": {"recall": [round(float(r), 4) for r in RECALL_LEVELS], "precision": self.pr_curve},
            "notes": self.notes,
        }


class Accumulator:
    """Sums per-query metrics block by block.

    Feed it relevance matrices with :meth:`add` (or label-based rankings with
    :meth:`add_labelled`), then call :meth:`report`.
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS):
        self.ks = tuple(ks)
        self.ap: list[np.ndarray] = []
        self.precision: dict[int, list[np.ndarray]] = {k: [] for k in self.ks}
        self.recall: dict[int, list[np.ndarray]] = {k: [] for k in self.ks}
        self.ns: list[np.ndarray] = []
        self.group_of_four = True
        self.curves: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.without_relevant = 0

    def add(
        self, relevant: np.ndarray, n_relevant: np.ndarray, classes: Sequence[str], query_in_collection: bool
    ) -> None:
        """One block of queries.

        Parameters
        ----------
        relevant : (q, m) bool array
            Relevance of each query's ranked results (itself and junk already removed).
        n_relevant : (q,) int array
            Relevant items each query could find (its group size, minus itself).
        classes : q labels
            For per-class means.
        query_in_collection : bool
            Whether the queries were taken from the collection (for N-S).
        """
        relevant = np.asarray(relevant, dtype=bool)
        n_relevant = np.asarray(n_relevant, dtype=np.int64)
        classes = np.asarray(classes, dtype=object)
        keep = n_relevant > 0
        self.without_relevant += int((~keep).sum())
        relevant, n_relevant, classes = relevant[keep], n_relevant[keep], classes[keep]
        if not len(n_relevant):
            return
        hits = np.cumsum(relevant, axis=1)
        ranks = np.arange(1, relevant.shape[1] + 1)
        self.ap.append((relevant * (hits / ranks)).sum(axis=1) / n_relevant)
        for k in self.ks:
            found = hits[:, min(k, hits.shape[1]) - 1] if hits.shape[1] else np.zeros(len(hits))
            self.precision[k].append(found / k)
            self.recall[k].append(found / n_relevant)
        group = n_relevant + (1 if query_in_collection else 0)
        self.group_of_four &= bool((group == NS_GROUP).all())
        top = NS_GROUP - 1 if query_in_collection else NS_GROUP
        in_top = hits[:, min(top, hits.shape[1]) - 1] if hits.shape[1] else np.zeros(len(hits))
        self.ns.append(in_top + (1 if query_in_collection else 0))
        precision = hits / ranks if hits.shape[1] else np.zeros_like(hits, dtype=float)
        self.curves.append(
            np.array([_interpolate(h, p, n, RECALL_LEVELS) for h, p, n in zip(hits, precision, n_relevant)])
        )
        self.classes.append(classes)

    def add_labelled(
        self, labels: np.ndarray, query_rows: np.ndarray, ranked_rows: np.ndarray, query_in_collection: bool = True
    ) -> None:
        """Queries that are rows of a labelled collection; relevant = same label.

        ``ranked_rows[i]``: row numbers ranked for ``query_rows[i]``, -1 padded,
        the query itself already removed.
        """
        labels = np.asarray(labels)
        classes, class_of = np.unique(labels, return_inverse=True)
        sizes = np.bincount(class_of)
        query_class = class_of[query_rows]
        valid = ranked_rows >= 0
        relevant = valid & (class_of[np.where(valid, ranked_rows, 0)] == query_class[:, None])
        n_relevant = sizes[query_class] - (1 if query_in_collection else 0)
        self.add(relevant, n_relevant, classes[query_class].astype(str), query_in_collection)

    def report(self, protocol: str = "leave-one-out") -> EvaluationReport:
        ap = np.concatenate(self.ap) if self.ap else np.zeros(0)
        classes = np.concatenate(self.classes) if self.classes else np.zeros(0, dtype=object)
        precision = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.precision.items()}
        recall = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.recall.items()}
        curves = np.concatenate(self.curves) if self.curves else np.zeros((0, len(RECALL_LEVELS)))
        per_class = {}
        class_k = PER_CLASS_K if PER_CLASS_K in precision else None
        for name in sorted(set(classes.tolist())):
            chosen = classes == name
            entry = {"n": int(chosen.sum()), "map": _mean(ap[chosen])}
            if class_k is not None:
                entry[f"precision@{class_k}"] = _mean(precision[class_k][chosen])
            per_class[str(name)] = entry
        ns = np.concatenate(self.ns) if self.ns else np.zeros(0)
        return EvaluationReport(
            n_queries=int(len(ap)),
            map=_mean(ap),
            precision={k: _mean(v) for k, v in precision.items()},
            recall={k: _mean(v) for k, v in recall.items()},
            per_class=per_class,
            queries_without_relevant=self.without_relevant,
            ns_score=_mean(ns) if len(ns) and self.group_of_four else None,
            pr_curve=[round(float(p), 6) for p in curves.mean(axis=0)] if len(curves) else [0.0] * len(RECALL_LEVELS),
            protocol=protocol,
        )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def without_self(ranked: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Replace each query's own row by -1 padding at the end, keeping the order of the rest."""
    dropped = (ranked == query_rows[:, None]) | (ranked < 0)
    order = np.argsort(dropped, axis=1, kind="stable")
    reordered = np.take_along_axis(ranked, order, axis=1)
    reordered[np.take_along_axis(dropped, order, axis=1)] = -1
    return reordered


def evaluate_rankings(
    rankings: np.ndarray, labels: Sequence, ks: Sequence[int] = DEFAULT_KS, query_rows: np.ndarray | None = None
) -> EvaluationReport:
    """Metrics for precomputed rankings of queries taken from a labelled collection.

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
    accumulator = Accumulator(ks)
    accumulator.add_labelled(labels, np.asarray(query_rows), rankings)
    return accumulator.report()
