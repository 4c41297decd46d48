"""``manifest.json``: what an index is (extractor config, dimension, metric, FAISS factory, versions).

Read and checked by :func:`read_manifest`; written only by :func:`write_manifest`
(atomically), which :meth:`cbir.store.directory.IndexStore.create` and
:meth:`~cbir.store.directory.IndexStore.update_manifest` call.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from cbir._version import __version__
from cbir.errors import IndexCorruptError
from cbir.fileio import write_json_atomic

MANIFEST_FILE = "manifest.json"
FORMAT = "cbir-index"
FORMAT_VERSION = 1
METRIC = "inner_product"


def package_versions() -> dict[str, str]:
    """Versions recorded in a manifest, to explain differences between machines."""
    import cv2
    import faiss

    return {
        "cbir": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "opencv": cv2.__version__,
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` into the index folder ``path``, atomically."""
    write_json_atomic(Path(path) / MANIFEST_FILE, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json``; :class:`IndexCorruptError` if it is unusable."""
    file = Path(path) / MANIFEST_FILE
    name = Path(path).name
    if not file.is_file():
        raise IndexCorruptError(f"index {name!r} has no {MANIFEST_FILE}: it was never finished; run cbir index again")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"index {name!r} is corrupt: {MANIFEST_FILE} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"index {name!r} is corrupt: {MANIFEST_FILE} is not a cbir manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexCorruptError(f"index {name!r} was written by a newer cbir (format {manifest['format_version']}); upgrade cbir")
    missing = [key for key in ("embedder", "dim", "metric", "factory") if key not in manifest]
    if missing:
        raise IndexCorruptError(f"index {name!r} is corrupt: {MANIFEST_FILE} lacks {', '.join(missing)}")
    problem = _embedder_problem(manifest)
    if problem is not None:
        raise IndexCorruptError(
            f"index {name!r} is corrupt: {file} {problem}; restore that file from a backup or an earlier copy, "
            f"or delete the index (cbir delete {name} --yes) and build it again"
        )
    return manifest


def _embedder_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the manifest's extractor config and dimension (an edited or damaged file), or ``None``.

    Checked on every open, writers included: a run must not report
    "unchanged" over an index no reader can use, and a wrong ``dim`` is the
    manifest's fault, not the catalogue's.
    """
    from cbir.errors import CbirError
    from cbir.features.pipeline import Embedder

    dim = manifest["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        return f"has an invalid dimension {dim!r}"
    if manifest["metric"] != METRIC:
        return f"names metric {manifest['metric']!r} (cbir indexes use {METRIC!r})"
    try:
        embedder = Embedder.from_config(manifest["embedder"])
        expected = int(embedder.dim)
    except CbirError as exc:
        return f"has an unusable extractor config ({exc})"
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"has a malformed extractor config ({type(exc).__name__}: {exc})"
    if expected != dim:
        return f"says dimension {dim}, but its extractor {embedder.describe()} gives {expected}-d vectors"
    return None
