"""The interface every feature extractor shares, and the registry of extractors.

An extractor turns decoded RGB images into L2-normalised float32 vectors. It
follows scikit-learn's estimator conventions:

* ``__init__`` only stores its keyword hyperparameters, unchanged;
* ``get_params()`` returns them, and with the extractor's ``name`` it is the
  config saved in an index's manifest, so a query is embedded exactly as the
  collection was;
* ``fit(images)`` learns what needs learning (a no-op for histograms) and
  returns ``self``; learned attributes end in ``_``;
* ``build()`` loads what the extractor runs with from outside (a pretrained
  network, a given model file) now instead of at the first ``transform``,
  and returns ``self``; ``weights_files()`` names those outside files;
* ``transform(images)`` returns a C-contiguous ``(n, dim)`` float32 array in
  input order, rows L2-normalised; no images give a ``(0, dim)`` array,
  without loading anything;
* ``save(directory)`` / ``load_state(directory)`` keep learned state (model
  weights...) beside the index, never with pickle.

For throughput the indexer splits ``transform`` in two: ``prepare(image)`` is
the per-image work, run in decoding threads (resizing, histogramming), and
``transform_prepared(items)`` is the batched work, run once per batch (a
network forward pass, normalisation).

Extractors are registered by name with a dotted path and imported only when
used, so the colour path never imports TensorFlow.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from cbir.errors import UsageError

#: name -> "module:Class"; imported lazily by :func:`extractor_class`.
EXTRACTORS: dict[str, str] = {
    "color": "cbir.features.color:ColorHistogram",
    "cnn": "cbir.features.cnn:CNNExtractor",
    "autoencoder": "cbir.features.autoencoder:AutoencoderExtractor",
}


class Extractor:
    """Base class of feature extractors (see the module docstring)."""

    #: Registry name, also stored in manifests.
    name: ClassVar[str] = ""
    #: True when ``fit`` learns something (so an index must fit before embedding).
    requires_fit: ClassVar[bool] = False
    #: Parameters that change how fast vectors are computed, not the vectors
    #: (a runtime, a batch size): an index may be updated or queried with others.
    runtime_params: ClassVar[tuple[str, ...]] = ()
    #: True when ``transform_prepared`` runs a network on every core: other work
    #: beside it (a server decoding uploads) preempts its threads and slows both.
    transform_uses_every_core: ClassVar[bool] = False
    #: What a stored config that lacks a parameter means: the behaviour from
    #: before the parameter existed, where today's default for a new index
    #: differs (so an old index keeps embedding queries as it embedded its images).
    absent_params: ClassVar[dict[str, Any]] = {}

    @property
    def embeds_in_workers(self) -> bool:
        """True when indexing worker processes may run ``transform_prepared`` too.

        Each worker then builds its own copy from the index's saved state and
        embeds its own files with a share of the cores: the state must load
        quickly and without TensorFlow.
        """
        return True

    # -- configuration -----------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters passed to ``__init__``, as JSON-friendly values."""
        return {name: _jsonable(getattr(self, name)) for name in self._param_names()}

    def get_config(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: enough to rebuild this extractor."""
        return {"name": self.name, "params": self.get_params()}

    def check_params(self) -> None:
        """Raise :class:`~cbir.errors.UsageError` if a hyperparameter cannot work."""

    @classmethod
    def normalize_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters as they should be stored, e.g. file paths made absolute.

        A manifest is read from other working directories (a later update, a
        query): anything relative to the current one must be pinned here.
        """
        return dict(params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- learning ----------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether ``transform`` can run (always true for stateless extractors)."""
        return not self.requires_fit

    def fit(self, images: Sequence[np.ndarray], **fit_params: Any) -> "Extractor":
        """Learn from decoded RGB images; a no-op unless the extractor learns.

        Learning extractors may take keyword ``fit_params``; the indexer
        passes ``work_dir`` (a folder for resumable training state) and
        ``progress`` (a :class:`cbir.progress.Progress`).
        """
        self.check_params()
        return self

    def build(self, progress: Any = None) -> "Extractor":
        """Load what embedding needs from outside files now; returns ``self``.

        Building happens at the first :meth:`transform` otherwise; callers
        call it first to spend that time before a progress bar starts.
        ``progress`` (a :class:`cbir.progress.Progress`) is told when the
        step is slow. A no-op for extractors that load nothing.
        """
        return self

    # -- embedding ---------------------------------------------------------
    @property
    def decode_min_side(self) -> int | None:
        """Hint for the decoder: the shorter side this extractor needs.

        Large JPEGs are decoded at a reduced scale (1/2, 1/4, 1/8) as long as
        their shorter side stays at least this long. ``None`` means full size.
        """
        return None

    @property
    def dim(self) -> int:
        """Length of the vectors ``transform`` returns."""
        raise NotImplementedError

    def prepare(self, image: np.ndarray) -> Any:
        """Per-image work, safe to run in several threads at once."""
        return image

    def transform_prepared(self, items: Sequence[Any]) -> np.ndarray:
        """Batched work on the outputs of :meth:`prepare`: ``(n, dim)`` float32, L2-normalised rows."""
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._transform_prepared(items)

    def _transform_prepared(self, items: Sequence[Any]) -> np.ndarray:
        """:meth:`transform_prepared` of at least one item; what subclasses implement."""
        raise NotImplementedError

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed decoded RGB uint8 images into an ``(n, dim)`` float32 array."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.transform_prepared([self.prepare(image) for image in images])

    # -- persistence -------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write learned state into ``directory`` (nothing for stateless extractors)."""

    def load_state(self, directory: Path) -> "Extractor":
        """Read the state :meth:`save` wrote; returns ``self``."""
        return self

    def weights_files(self) -> list[Path]:
        """Files outside the index the vectors depend on (pretrained weights, a
        given model), recorded with their hashes in an index's manifest."""
        return []


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 C-contiguous."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def available_extractors() -> list[str]:
    """Names accepted by :func:`make_extractor`."""
    return sorted(EXTRACTORS)


def extractor_class(name: str) -> type[Extractor]:
    """The class registered under ``name``, imported on first use."""
    try:
        target = EXTRACTORS[name]
    except KeyError:
        choices = ", ".join(available_extractors())
        raise UsageError(f"unknown extractor {name!r}; choose one of: {choices}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_extractor(name: str, **params: Any) -> Extractor:
    """Build an extractor by registry name; unknown parameters are refused."""
    cls = extractor_class(name)
    allowed = cls._param_names()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UsageError(
            f"extractor {name!r} has no parameter {', '.join(unknown)}; it takes: {', '.join(allowed)}"
        )
    extractor = cls(**params)
    extractor.check_params()
    return extractor


def extractor_for_params(params: Sequence[str]) -> str:
    """The registered extractor that takes every one of ``params`` (colour when none are given).

    Lets a new index follow from its options (``--backbone`` means cnn)
    without repeating each extractor's parameter names.
    """
    names = set(params)
    for name in EXTRACTORS:
        if names <= set(extractor_class(name)._param_names()):
            return name
    raise UsageError(f"no extractor takes all of: {', '.join(sorted(names))}")


def extractor_from_config(config: dict[str, Any]) -> Extractor:
    """Inverse of :meth:`Extractor.get_config`; a parameter the config lacks
    means what it meant before it existed (:attr:`Extractor.absent_params`)."""
    cls = extractor_class(config["name"])
    return make_extractor(config["name"], **{**cls.absent_params, **config.get("params", {})})


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
