"""Feature extractors: one module each, sharing the interface in :mod:`cbir.features.base`.

``color`` (HSV histograms) needs only OpenCV; ``cnn`` and ``autoencoder``
import TensorFlow when they are first used, never before.
"""

from cbir.features.base import Extractor, available_extractors, extractor_class, make_extractor

__all__ = ["Extractor", "available_extractors", "extractor_class", "make_extractor"]
