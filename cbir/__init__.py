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

from cbir._version import __version__

_EXPORTS = {
    "index_folder": "cbir.indexing.run",
    "IndexSummary": "cbir.indexing.run",
    "Searcher": "cbir.retrieval.search",
    "QueryResult": "cbir.retrieval.results",
    "Match": "cbir.retrieval.results",
    "evaluate_index": "cbir.evaluation.protocols",
    "evaluate_vectors": "cbir.evaluation.protocols",
    "EvaluationReport": "cbir.evaluation.protocols",
    "IndexStore": "cbir.store.directory",
    "Embedder": "cbir.features.pipeline",
    "PCAReduction": "cbir.features.pca",
    "make_extractor": "cbir.features.base",
    "available_extractors": "cbir.features.base",
    "find_images": "cbir.images.decode",
    "read_image": "cbir.images.decode",
    "write_montage": "cbir.render.montage",
    "CbirError": "cbir.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cbir' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
