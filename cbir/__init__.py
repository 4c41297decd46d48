"""cbir: content-based image retrieval. Index image folders, query by example, evaluate.

The public API is re-exported here and imported on first use, so that
``import cbir`` (and ``cbir --help``) stays fast and never loads TensorFlow::

    from cbir import index_folder, Searcher, evaluate_index
    index_folder("photos/", name="trip")
    with Searcher.open("trip") as searcher:
        print(searcher.query("photos/beach.jpg", k=5).to_dict())
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "index_folder": "cbir.indexer",
    "IndexSummary": "cbir.indexer",
    "Searcher": "cbir.search",
    "QueryResult": "cbir.search",
    "Match": "cbir.search",
    "evaluate_index": "cbir.evaluate",
    "evaluate_vectors": "cbir.evaluate",
    "EvaluationReport": "cbir.evaluate",
    "IndexStore": "cbir.store",
    "Embedder": "cbir.features.pipeline",
    "PCAReduction": "cbir.features.pca",
    "make_extractor": "cbir.features.base",
    "available_extractors": "cbir.features.base",
    "find_images": "cbir.images",
    "read_image": "cbir.images",
    "write_montage": "cbir.montage",
    "CbirError": "cbir.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cbir' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
