"""Spatial verification of a query's shortlist: the index's stored local features -> RANSAC inliers -> a new order.

The maths is :mod:`cbir.ann.verify`'s and the features are
:mod:`cbir.features.local`'s; this module joins them to an open index: the
index's local-features config (or the one error that says how to add it),
the query's features computed the same way, the candidates' read from the
catalogue, and :class:`~cbir.retrieval.search.Match` objects re-ranked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np

from cbir.ann.verify import NOT_VERIFIED, Verification, rerank_order, verify_candidates
from cbir.errors import UsageError
from cbir.features.local import LocalFeatureConfig, LocalFeatures, descriptors_for_matching, unpack


def local_config_of(manifest: Mapping, count: int, name: str, roots: Sequence[str]) -> LocalFeatureConfig:
    """The index's local-features config; :class:`UsageError` naming the command that adds them if it has none."""
    config = manifest.get("local_features")
    if config and count > 0:
        return LocalFeatureConfig.from_dict(config)
    folder = roots[0] if len(roots) == 1 else "FOLDER"
    raise UsageError(
        f"index {name!r} has no local features to verify with: run `cbir index {folder} --name {name} --local-features` "
        "once to add them (its vectors are kept, nothing is re-embedded)"
    )


def verify_shortlist(
    query: LocalFeatures,
    ids: Sequence[int],
    scores: np.ndarray,
    stored: Callable[[Sequence[int]], dict[int, bytes]],
) -> tuple[np.ndarray, list[Verification]]:
    """``(new order of the positions 0..len(ids)-1, each candidate's verification)``.

    ``stored(ids)`` gives the candidates' packed features (those without are not verified).
    """
    checks = _check_each(query, _candidates(stored, ids))
    order = rerank_order(np.asarray(scores, np.float32), np.array([c.inliers for c in checks]))
    return order, checks


def _candidates(stored, ids: Sequence[int]) -> list[LocalFeatures | None]:
    records = stored([int(i) for i in ids])
    return [None if records.get(int(i)) is None else unpack(records[int(i)]) for i in ids]


def _check_each(query: LocalFeatures, candidates: Sequence[LocalFeatures | None]) -> list[Verification]:
    pairs = [(c.xy, descriptors_for_matching(c)) if c is not None and c.kind == query.kind else None for c in candidates]
    return verify_candidates(query.xy, descriptors_for_matching(query), pairs, binary=query.kind == "orb")


def best_of_examples(queries: Sequence[LocalFeatures | None], candidates: Sequence[LocalFeatures | None]) -> tuple[list[Verification], list[int | None]]:
    """Each candidate's best verification against any of ``queries`` (the positive examples), and which one gave it.

    A candidate that shows one of the examples is verified by it: several
    examples of one thing are often different views, and each candidate need
    show only one of them (fusing by the most inliers, not their sum, keeps a
    single example's score the same as a plain verified query's).
    """
    best = [NOT_VERIFIED] * len(candidates)
    source: list[int | None] = [None] * len(candidates)
    for n, query in enumerate(queries):
        if query is None:
            continue
        for i, check in enumerate(_check_each(query, candidates)):
            if check.inliers > best[i].inliers:
                best[i], source[i] = check, n
    return best, source


def rerank_matches(matches: list, query: LocalFeatures | None | Sequence[LocalFeatures | None], stored, shortlist: int, k: int) -> list:
    """The first ``shortlist`` matches verified and re-ordered, then the rest; ``k`` of them, ranks renumbered.

    ``query`` is the query's features, or a list of them (one per positive
    example, :func:`best_of_examples`; each verified match then says which
    example in ``verified_with``). Each verified match says so (``inliers``,
    and its ``correspondences`` for drawing).
    """
    several = isinstance(query, (list, tuple))
    queries = list(query) if several else [query]
    head, tail = matches[:shortlist], matches[shortlist:]
    if all(q is None for q in queries) or not head:
        reordered = [replace(m, inliers=0) for m in head] + tail
    else:
        checks, source = best_of_examples(queries, _candidates(stored, [m.id for m in head]))
        order = rerank_order(np.array([m.score for m in head], np.float32), np.array([c.inliers for c in checks]))
        reordered = [
            replace(
                head[i],
                inliers=checks[i].inliers,
                correspondences=(checks[i].query_xy, checks[i].candidate_xy) if checks[i].verified else None,
                verified_with=source[i] if several and checks[i].verified else None,
            )
            for i in order
        ] + tail
    return [replace(m, rank=n) for n, m in enumerate(reordered[:k], start=1)]
