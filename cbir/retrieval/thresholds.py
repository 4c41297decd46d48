"""The default near-duplicate threshold of each extractor: one declaration, measured.

A cosine similarity means different things for different vectors: at 0.95 a
colour histogram calls two horse photos near-duplicates, a CNN hardly calls
an edited copy one. So each extractor has its own default: the lowest
similarity that at most :data:`MAX_FALSE_RATE` of the pairs of distinct
Corel-1k photos reach, measured by ``benchmarks/duplicates.py``, which also
reports how many re-encoded, resized and cropped copies it finds
(docs/duplicates.md has the figures). The same false-alarm rate on every
extractor, so the same meaning. An index takes the default of the
extractor it was built with; ``--threshold`` overrides it. Light on purpose:
``cbir --help`` reads it.
"""

from __future__ import annotations

#: Extractor name -> default threshold (benchmarks/duplicates.py, the extractor's default settings, no PCA;
#: MobileNet with its ImageNet weights; the autoencoder trained on the 1000 photos, 40 epochs). Corel-1k's own
#: near groups at the old 0.95 -> at these: colour 8 -> 3, CNN 2 -> 4, autoencoder 1 of 984 images -> 1 of 2.
DEFAULT_THRESHOLDS: dict[str, float] = {"color": 0.955, "cnn": 0.937, "autoencoder": 0.993}
#: For an extractor not measured (a new one): the old single default.
FALLBACK_THRESHOLD = 0.95
#: The share of pairs of distinct photos each default lets through: 1 in 100,000 (4 of Corel's 499,500).
MAX_FALSE_RATE = 1e-5


def default_threshold(manifest: dict) -> tuple[float, str]:
    """``(threshold, where it came from)`` for an index, from its manifest's extractor."""
    name = manifest.get("embedder", {}).get("extractor", {}).get("name", "")
    if name in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[name], f"default for {name}"
    return FALLBACK_THRESHOLD, f"default; {name or 'this extractor'} was not measured"
