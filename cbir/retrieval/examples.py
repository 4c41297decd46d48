"""Several examples in one query, and examples to avoid (rclip's ``+``/``-``, Qdrant's recommend).

The query vector is the weighted mean of the positive examples minus
:data:`NEGATIVE_WEIGHT` times the weighted mean of the negative ones, then
L2-normalised: an image like every positive scores highest, and the
direction the negatives share is pushed away (docs/filters.md measures it on
Corel-1k).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cbir.errors import NotInIndexError, UsageError
from cbir.images.scan import normalize_path
from cbir.retrieval.query_inputs import content_digest, prepare_batch

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


def examples_with_features(searcher, examples: Sequence[Example], channels: str = "RGB", local: bool = True) -> tuple[np.ndarray, list]:
    """``(vectors, local features)`` of the examples; the features (``None`` each where the searcher does not
    verify or an image has none) from the catalogue for ids, computed as at indexing for images."""
    out = np.zeros((len(examples), searcher.store.dim), np.float32)
    extractor = searcher.local_extractor if local else None
    features: list = [None] * len(examples)
    by_id = [n for n, e in enumerate(examples) if e.is_id]
    if by_id:
        ids = [int(examples[n].source) for n in by_id]
        try:  # one catalogue read for every id
            out[by_id] = searcher.original_vectors(ids)
        except KeyError as exc:
            raise NotInIndexError(f"index {searcher.name!r} holds {str(exc).strip(chr(39))}") from None
        if extractor is not None:
            from cbir.features.local import unpack

            stored = searcher.local_features(ids)
            for n, image_id in zip(by_id, ids):
                features[n] = unpack(stored[image_id]) if image_id in stored else None
    images = [n for n, e in enumerate(examples) if not e.is_id]
    if images:
        prepared = []
        for n, (item, error) in zip(images, prepare_batch([examples[n].source for n in images], channels, searcher.embedder, extractor)):
            if error is not None:
                raise error
            prepared.append(item)
            features[n] = getattr(item, "features", None)
        out[images] = searcher.embed_prepared(prepared)
    return out, features


def example_files(searcher, examples: Sequence[Example]) -> tuple[str, ...]:
    """Each example's file: its path, an id's indexed file, ``""`` for bytes or an array (what a picture can show)."""
    rows = {row.id: row.path for row in searcher.image_rows([int(e.source) for e in examples if e.is_id])}
    return tuple(
        rows.get(int(e.source), "") if e.is_id else (str(normalize_path(e.source)) if isinstance(e.source, (str, os.PathLike)) else "")
        for e in examples
    )


def example_ids(searcher, examples: Sequence[Example]) -> list[int]:
    """Catalogue ids of the examples: ids given, and images of the same path or content as an image example."""
    ids = {int(e.source) for e in examples if e.is_id}
    digests = [d for d in (content_digest(e.source) for e in examples if not e.is_id) if d is not None]
    paths = [str(normalize_path(e.source)) for e in examples if isinstance(e.source, (str, os.PathLike))]
    return sorted(ids | searcher.image_ids_for(paths, digests))
