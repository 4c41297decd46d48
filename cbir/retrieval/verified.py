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

from cbir.ann.verify import Verification, rerank_order, verify_candidates
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
    records = stored([int(i) for i in ids])
    candidates = []
    for image_id in ids:
        data = records.get(int(image_id))
        if data is None:
            candidates.append(None)
            continue
        features = unpack(data)
        candidates.append((features.xy, descriptors_for_matching(features)) if features.kind == query.kind else None)
    checks = verify_candidates(query.xy, descriptors_for_matching(query), candidates, binary=query.kind == "orb")
    order = rerank_order(np.asarray(scores, np.float32), np.array([c.inliers for c in checks]))
    return order, checks


def rerank_matches(matches: list, query: LocalFeatures | None, stored, shortlist: int, k: int) -> list:
    """The first ``shortlist`` matches verified and re-ordered, then the rest; ``k`` of them, ranks renumbered.

    Each verified match says so (``inliers``, and its ``correspondences`` for drawing).
    """
    head, tail = matches[:shortlist], matches[shortlist:]
    if query is None or not head:
        reordered = [replace(m, inliers=0) for m in head] + tail
    else:
        order, checks = verify_shortlist(query, [m.id for m in head], np.array([m.score for m in head]), stored)
        reordered = [
            replace(head[i], inliers=checks[i].inliers, correspondences=(checks[i].query_xy, checks[i].candidate_xy) if checks[i].verified else None)
            for i in order
        ] + tail
    return [replace(m, rank=n) for n, m in enumerate(reordered[:k], start=1)]
