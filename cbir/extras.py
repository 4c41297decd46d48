"""Optional parts of cbir and the packages they need: the one place that says what to install.

The core install (colour histograms, FAISS, the catalogue, the CLI) brings no
TensorFlow, OpenVINO or LiteRT. Code that needs one of them imports it with
:func:`import_optional`, which turns a missing package into one
:class:`~cbir.errors.MissingExtraError` sentence naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cbir.errors import MissingExtraError

#: extra -> what it adds (the packages are declared in pyproject.toml).
EXTRAS = {
    "litert": "LiteRT, to query a CNN index",
    "cnn": "TensorFlow, LiteRT and OpenVINO, to build and query CNN indexes",
    "autoencoder": "TensorFlow, LiteRT and OpenVINO, to train and use the autoencoder",
    "demo": "scikit-learn's sample photos for cbir demo",
    "serve": "FastAPI and uvicorn, for cbir serve",
    "formats": "pillow-heif and rawpy, to read HEIC/HEIF and camera RAW files",
    "watch": "watchfiles, for cbir watch (an index that follows its folder)",
    "all": "every optional part",
}


def missing_extra(package: str, extra: str, purpose: str) -> MissingExtraError:
    """The error for ``purpose`` needing ``package``, which comes with ``cbir[extra]``."""
    return MissingExtraError(f"{purpose} needs {package}, which is not installed: pip install 'cbir[{extra}]'")


def import_optional(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :func:`missing_extra` if its package is not installed.

    Only the module's own absence counts: a broken installation (one of its
    dependencies missing) keeps its original ImportError.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.split(".")[0] == exc.name.split(".")[0]:
            raise missing_extra(package, extra, purpose) from None
        raise
