"""The default near-duplicate threshold of each extractor: one declaration, measured.

A cosine similarity means different things for different vectors: at 0.95 a
colour histogram calls two horse photos near-duplicates, a CNN hardly calls
an edited copy one. So each extractor has its own default, the lowest
similarity at which, in ``benchmarks/duplicates.py``, at least
:data:`TARGET_PRECISION` of the pairs at or above it were a Corel-1k photo
and a re-encoded, resized or cropped copy of it, not two distinct photos
(docs/duplicates.md has the figures). An index takes the default of the
extractor it was built with; ``--threshold`` overrides it. Light on purpose:
``cbir --help`` reads it.
"""

from __future__ import annotations

#: Extractor name -> default threshold (benchmarks/duplicates.py, the extractor's default settings, no PCA).
DEFAULT_THRESHOLDS: dict[str, float] = {"color": 0.95, "cnn": 0.95, "autoencoder": 0.95}
#: For an extractor not measured (a new one): the old single default.
FALLBACK_THRESHOLD = 0.95
#: The share of found pairs that must be true copies, from which each default was chosen.
TARGET_PRECISION = 0.99


def default_threshold(manifest: dict) -> tuple[float, str]:
    """``(threshold, where it came from)`` for an index, from its manifest's extractor."""
    name = manifest.get("embedder", {}).get("extractor", {}).get("name", "")
    if name in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[name], f"default for {name}"
    return FALLBACK_THRESHOLD, f"default; {name or 'this extractor'} was not measured"
