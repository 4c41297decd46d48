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

Each extractor declares its hyperparameters once, in ``parameters`` (a tuple
of :class:`Param`: name, type, default, help, choices; in the spirit of
scikit-learn's parameter constraints). Everything that offers them is derived
from that declaration: ``get_params``, :class:`cbir.features.pipeline.EmbedderOptions`,
the keys of a benchmark spec and the options of ``cbir index``.

Extractors are registered by name with a dotted path and imported only when
used, so the colour path never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from cbir.errors import UsageError

#: name -> "module:Class" (or the class itself); imported lazily by :func:`extractor_class`.
EXTRACTORS: dict[str, Any] = {
    "color": "cbir.features.color:ColorHistogram",
    "cnn": "cbir.features.cnn:CNNExtractor",
    "autoencoder": "cbir.features.autoencoder:AutoencoderExtractor",
}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Param:
    """One hyperparameter of an extractor, declared once.

    ``type`` is ``int``, ``float``, ``str``, ``bool`` or ``list`` (of ``item``
    values, ``int`` or ``float``, written ``8,12,3`` or ``1,0.71,0.5``).
    ``choices`` are the accepted values; with
    ``path`` they are the words accepted instead of a file path (``weights``:
    ``imagenet``, ``none`` or a file), and a path is resolved where it is
    given (a benchmark spec's folder). ``option`` makes it a named option of
    ``cbir index`` (``--input-size``); every parameter is reachable with
    ``--param NAME=VALUE`` anyway. ``flag``, a pair ``(option, value)``, makes
    that option a flag meaning the value (``("--grey", 1)``: ``channels=1``).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()
    path: bool = False
    option: bool = False
    flag: Any = None
    item: type = int

    @property
    def option_name(self) -> str:
        """The option of ``cbir index`` (``--gem-p``), or the flag's name."""
        return self.flag[0] if self.flag else "--" + self.name.replace("_", "-")

    def parse(self, text: str, what: str | None = None) -> Any:
        """The value ``text`` (from a command line) stands for; :class:`UsageError` naming ``what``
        (default: the parameter) if it cannot."""
        text = text.strip()
        if self.path or self.type is str:
            return None if self.default is None and text.lower() in ("", "null") else text
        try:
            if self.type is list:
                return [self.item(part) for part in text.replace("x", ",").split(",")]
            if self.type is bool:
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError(text)
                return text.lower() in _TRUE
            return self.type(text)
        except ValueError:
            raise UsageError(f"{what or self.name} must be {self.describe_type()}, got {text!r}") from None

    def describe_type(self) -> str:
        if self.type is list:
            example = ",".join(str(v) for v in self.default) if self.default else "1,2,3"
            return f"{'integers' if self.item is int else 'numbers'} separated by commas, like {example}"
        return {int: "a whole number", float: "a number", bool: "true or false"}.get(self.type, "text")


class Extractor:
    """Base class of feature extractors (see the module docstring)."""

    #: Registry name, also stored in manifests.
    name: ClassVar[str] = ""
    #: What ``cbir index --help`` calls this extractor (the title of its options).
    title: ClassVar[str] = ""
    #: The hyperparameters, in ``__init__``'s order, with the same defaults
    #: (the contract test holds them to it).
    parameters: ClassVar[tuple[Param, ...]] = ()
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
        return [param.name for param in cls.parameters]

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters passed to ``__init__``, as JSON-friendly values."""
        return {name: _jsonable(getattr(self, name)) for name in self._param_names()}

    def get_config(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: enough to rebuild this extractor."""
        return {"name": self.name, "params": self.get_params()}

    def check_params(self) -> None:
        """Raise :class:`~cbir.errors.UsageError` if a hyperparameter cannot work.

        Extractors add their own checks (ranges, combinations) in front of
        the declared ones (:func:`check_declared`).
        """

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
    if isinstance(target, type):
        return target
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
    check_declared(extractor)
    return extractor


def check_declared(extractor: Extractor) -> None:
    """Refuse a value of the wrong type or outside its declared choices.

    What every extractor gets from its declaration alone; its own
    ``check_params`` runs first, with the more precise messages.
    """
    for param in extractor.parameters:
        value = getattr(extractor, param.name)
        if value is None and param.default is None:
            continue
        if param.choices and value in param.choices:
            continue
        if param.choices and not param.path:
            choices = ", ".join(str(c) for c in param.choices)
            raise UsageError(f"{extractor.name} {param.name} must be one of {choices}, got {value!r}")
        if not _has_type(value, param.type, param.item):
            raise UsageError(f"{extractor.name} {param.name} must be {param.describe_type()}, got {value!r}")


def _has_type(value: Any, kind: type, item: type = int) -> bool:
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    if kind is str:
        return isinstance(value, (str, Path))
    return isinstance(value, kind)


def declared_parameters() -> dict[str, list[tuple[str, Param]]]:
    """Every declared parameter name -> ``[(extractor name, its Param), ...]``, in registry order.

    Imports each registered extractor's module (never TensorFlow). A name
    shared by several extractors (``input_size``, ``seed``) must have one
    type everywhere: a value given once (``--seed 3``) means the same to each.
    """
    found: dict[str, list[tuple[str, Param]]] = {}
    for name in EXTRACTORS:
        for param in extractor_class(name).parameters:
            found.setdefault(param.name, []).append((name, param))
    for key, declared in found.items():
        types = {param.type for _, param in declared}
        if len(types) > 1:
            owners = ", ".join(f"{owner} ({param.type.__name__})" for owner, param in declared)
            raise TypeError(f"extractor parameter {key!r} has different types in {owners}")
    return found


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
