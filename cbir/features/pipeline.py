"""An extractor followed by an optional PCA: what turns images into index vectors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cbir.errors import UsageError
from cbir.features.base import (
    Extractor,
    declared_parameters,
    extractor_class,
    extractor_for_params,
    extractor_from_config,
    make_extractor,
)
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

    def differences(self, config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """What would embed differently from ``config`` (an index's stored config).

        Returns ``{option: (stored value, this embedder's value)}``; parameters
        that only change how fast vectors are computed (``runtime_params``) are
        not differences.
        """
        stored_extractor = config["extractor"]
        if stored_extractor["name"] != self.extractor.name:
            return {"extractor": (stored_extractor["name"], self.extractor.name)}
        runtime = set(self.extractor.runtime_params)
        # Through the class, so parameters a manifest leaves out count as their defaults.
        stored, wanted = extractor_from_config(stored_extractor).get_params(), self.extractor.get_params()
        found = {
            key: (stored.get(key), wanted.get(key))
            for key in sorted(set(stored) | set(wanted))
            if key not in runtime and stored.get(key) != wanted.get(key)
        }
        stored_pca, wanted_pca = config.get("pca"), self.get_config()["pca"]
        if stored_pca != wanted_pca:
            found["pca"] = (_describe_pca(stored_pca), _describe_pca(wanted_pca))
        return found

    def runtime_overrides(self, config: dict[str, Any]) -> dict[str, Any]:
        """This embedder's ``runtime_params`` that differ from ``config``'s (applied when the index is opened)."""
        stored = extractor_from_config(config["extractor"]).get_params()
        return {
            key: value
            for key, value in self.extractor.get_params().items()
            if key in self.extractor.runtime_params and stored.get(key) != value
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


def _describe_pca(config: dict[str, Any] | None) -> str:
    if not config:
        return "none"
    text = f"{config['n_components']}" + (" whitened" if config.get("whiten") else "")
    if config.get("shrinkage"):
        text += f" (shrinkage {config['shrinkage']})"
    if config.get("power", 1) != 1:
        text += f" power {config['power']}"
    return text


#: The options of the embedder as a whole; every other key is an extractor parameter.
_OPTION_KEYS = ("extractor", "model", "pca", "pca_whiten", "pca_shrinkage", "pca_power")


@dataclass(frozen=True)
class EmbedderOptions:
    """What a user asked for when indexing: an extractor, some of its parameters, a PCA.

    Anything left unset keeps the index's own setting (on an existing index)
    or the default (on a new one), so ``cbir index PHOTOS --runtime tflite``
    and ``index_folder(..., options={"runtime": "tflite"})`` do the same thing.
    """

    extractor: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    #: A trained model to use instead of fitting (extractors with ``from_pretrained``).
    model: str | os.PathLike | None = None
    pca: int | None = None
    pca_whiten: bool = False
    #: Whitening shrinkage and signed power of :class:`PCAReduction` (``None``: unset).
    pca_shrinkage: float | None = None
    pca_power: float | None = None

    @staticmethod
    def keys() -> tuple[str, ...]:
        """Every key :meth:`from_mapping` takes: the embedder's own and each registered extractor's parameters."""
        return (*_OPTION_KEYS, *declared_parameters())

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "EmbedderOptions":
        """``{"extractor": ..., "model": ..., "pca": ..., "pca_whiten": ..., **extractor params}``; ``None`` values are unset.

        A key no registered extractor declares is refused, naming the ones there are.
        """
        given = {key: value for key, value in options.items() if value is not None}
        params = {key: value for key, value in given.items() if key not in _OPTION_KEYS}
        unknown = sorted(set(params) - set(declared_parameters()))
        if unknown:
            raise UsageError(
                f"unknown option {', '.join(map(repr, unknown))}; options are {', '.join(sorted(cls.keys()))}"
            )
        return cls(
            extractor=given.get("extractor"),
            params=params,
            model=given.get("model"),
            pca=given.get("pca"),
            pca_whiten=bool(given.get("pca_whiten", False)),
            pca_shrinkage=given.get("pca_shrinkage"),
            pca_power=given.get("pca_power"),
        )

    @property
    def pca_refinements(self) -> dict[str, Any]:
        """The PCA parameters beyond the dimension that were given: ``whiten``, ``shrinkage``, ``power``."""
        given = {"whiten": True if self.pca_whiten else None, "shrinkage": self.pca_shrinkage, "power": self.pca_power}
        return {key: value for key, value in given.items() if value is not None}

    @property
    def given(self) -> bool:
        return bool(self.extractor or self.params or self.model is not None or self.pca is not None or self.pca_refinements)

    def resolve(self, existing: dict[str, Any] | None = None) -> Embedder | None:
        """The embedder these options describe; ``None`` when nothing was asked (keep or default).

        ``existing`` is the config an index was built with: options then
        change only what they name. Without it (a new index) the extractor
        is the one given, else the one its parameters belong to.
        """
        if not self.given:
            return None
        if self.pca_refinements and self.pca is None and not (existing and existing.get("pca")):
            flag = {"whiten": "--pca-whiten", "shrinkage": "--pca-shrinkage", "power": "--pca-power"}[next(iter(self.pca_refinements))]
            raise UsageError(f"{flag} needs --pca")
        keep_existing = existing is not None and self.model is None and self.extractor in (None, existing["extractor"]["name"])
        if keep_existing:
            name = existing["extractor"]["name"]
        elif self.model is not None:
            name = self.extractor or _pretrained_extractor()
        else:
            name = self.extractor or extractor_for_params(self.params)
        params = extractor_class(name).normalize_params(dict(self.params))
        pca = self._pca_config(existing.get("pca") if keep_existing else None)
        if keep_existing:
            stored = existing["extractor"]
            merged = {"name": name, "params": {**stored.get("params", {}), **params}}
            return Embedder.from_config({"extractor": merged, "pca": pca})
        cls = extractor_class(name)
        if self.model is None:
            extractor = make_extractor(name, **params)
        elif hasattr(cls, "from_pretrained"):
            extractor = cls.from_pretrained(self.model, **params)
        else:
            raise UsageError(f"a trained model (--model) applies to --extractor {_pretrained_extractor()}, not {name}")
        return Embedder(extractor, PCAReduction(**pca) if pca else None)

    def _pca_config(self, stored: dict[str, Any] | None) -> dict[str, Any] | None:
        if self.pca is not None:
            config = PCAReduction(int(self.pca), **self.pca_refinements)
        elif stored and self.pca_refinements:
            config = PCAReduction(**{**stored, **self.pca_refinements})
        else:
            return stored
        config.check_params()  # one clear error before any work
        return config.get_params()


def _pretrained_extractor() -> str:
    from cbir.features.base import EXTRACTORS

    return next(name for name in EXTRACTORS if hasattr(extractor_class(name), "from_pretrained"))
