"""Several examples in one query, and examples to avoid (rclip's ``+``/``-``, Qdrant's recommend).

The query vector is the weighted mean of the positive examples minus
:data:`NEGATIVE_WEIGHT` times the weighted mean of the negative ones, then
L2-normalised: an image like every positive scores highest, and the
direction the negatives share is pushed away (docs/filters.md measures it on
Corel-1k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cbir.errors import UsageError

#: How strongly the negatives' mean is subtracted (Rocchio's beta/alpha, with alpha = 1).
NEGATIVE_WEIGHT = 0.5
#: At most this many examples in one query (each may be an upload to decode).
MAX_EXAMPLES = 32


@dataclass(frozen=True)
class Example:
    """One example: an image (a path, encoded bytes or an array, as :meth:`Searcher.query` takes) or an indexed image's id."""

    source: Any
    weight: float = 1.0

    @property
    def is_id(self) -> bool:
        return isinstance(self.source, (int, np.integer)) and not isinstance(self.source, bool)


def check_examples(positives: Sequence[Example], negatives: Sequence[Example]) -> None:
    if not positives:
        raise UsageError("a query needs at least one positive example (negatives only say what to avoid)")
    if len(positives) + len(negatives) > MAX_EXAMPLES:
        raise UsageError(f"at most {MAX_EXAMPLES} examples in one query, got {len(positives) + len(negatives)}")
    for example in (*positives, *negatives):
        weight = example.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
            raise UsageError(f"an example's weight must be a number above 0, got {weight!r}")


def combine_examples(
    positives: np.ndarray,
    positive_weights: Sequence[float],
    negatives: np.ndarray | None = None,
    negative_weights: Sequence[float] = (),
    negative_weight: float = NEGATIVE_WEIGHT,
) -> np.ndarray:
    """The one query vector (shape ``(1, d)``, unit length) of weighted positive and negative example vectors."""
    weights = np.asarray(positive_weights, dtype=np.float32)
    query = (weights[:, None] * positives).sum(axis=0) / weights.sum()
    if negatives is not None and len(negatives):
        against = np.asarray(negative_weights, dtype=np.float32)
        query = query - negative_weight * (against[:, None] * negatives).sum(axis=0) / against.sum()
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm < 1e-6:
        raise UsageError("the examples cancel each other out: no direction is left to search (fewer or lighter negatives)")
    return (query / norm).astype(np.float32)[None, :]
