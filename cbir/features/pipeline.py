"""An extractor followed by an optional PCA: what turns images into index vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir.features.base import Extractor, extractor_from_config
from cbir.features.pca import PCAReduction

_PCA_FILE = "pca.npz"
_EXTRACTOR_DIR = "extractor"


class Embedder:
    """Extractor plus optional :class:`PCAReduction`, with one config and one state folder.

    Not an extractor itself (it is not in the registry and its config is
    ``{"extractor": ..., "pca": ...}``), but it keeps the same promises:
    ``fit`` returns ``self``, ``transform`` gives L2-normalised float32 rows
    (no images: a ``(0, dim)`` array), ``save``/``load_state`` round-trip.

    ``get_config()`` is what an index manifest stores; ``Embedder.from_config``
    rebuilds it and ``load_state`` restores what was learned, so a query is
    embedded exactly as the collection was.
    """

    def __init__(self, extractor: Extractor, pca: PCAReduction | None = None):
        self.extractor = extractor
        self.pca = pca

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Embedder":
        extractor = extractor_from_config(config["extractor"])
        pca = PCAReduction(**config["pca"]) if config.get("pca") else None
        return cls(extractor, pca)

    def get_config(self) -> dict[str, Any]:
        return {
            "extractor": self.extractor.get_config(),
            "pca": self.pca.get_params() if self.pca is not None else None,
        }

    def describe(self) -> str:
        """Short human-readable form, e.g. ``color(bins=[8, 12, 3]) + PCA64``."""
        params = ", ".join(f"{k}={v}" for k, v in self.extractor.get_params().items())
        text = f"{self.extractor.name}({params})"
        if self.pca is not None:
            text += f" + PCA{self.pca.n_components}" + ("w" if self.pca.whiten else "")
        return text

    def __repr__(self) -> str:
        return f"Embedder({self.extractor!r}, {self.pca!r})"

    @property
    def is_fitted(self) -> bool:
        return self.extractor.is_fitted and (self.pca is None or self.pca.is_fitted)

    @property
    def decode_min_side(self) -> int | None:
        return self.extractor.decode_min_side

    @property
    def dim(self) -> int:
        return self.pca.dim if self.pca is not None else self.extractor.dim

    def fit(self, images: Sequence[np.ndarray], **fit_params: Any) -> "Embedder":
        """Fit the extractor, then the PCA on the extractor's vectors of ``images``; returns ``self``.

        What the Python API offers for images in memory; the indexer fits the
        same two steps itself, from a sample of files, with progress.
        ``fit_params`` go to the extractor's ``fit``.
        """
        self.extractor.fit(images, **fit_params)
        self.extractor.build()
        if self.pca is not None:
            self.pca.fit(self.extractor.transform(images))
        return self

    def prepare(self, image: np.ndarray) -> Any:
        return self.extractor.prepare(image)

    def transform_prepared(self, items: Sequence[Any]) -> np.ndarray:
        vectors = self.extractor.transform_prepared(items)
        return self.pca.transform(vectors) if self.pca is not None else vectors

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.transform_prepared([self.prepare(image) for image in images])

    def save(self, directory: Path) -> None:
        """Write learned state (extractor model, PCA arrays) under ``directory``."""
        directory = Path(directory)
        extractor_dir = directory / _EXTRACTOR_DIR
        extractor_dir.mkdir(parents=True, exist_ok=True)
        self.extractor.save(extractor_dir)
        if self.pca is not None:
            self.pca.save(directory / _PCA_FILE)

    def load_state(self, directory: Path) -> "Embedder":
        directory = Path(directory)
        self.extractor.load_state(directory / _EXTRACTOR_DIR)
        if self.pca is not None:
            self.pca.load_state(directory / _PCA_FILE)
        return self
