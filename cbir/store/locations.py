"""Where named indexes live, and what an index may be called: the one place that decides.

:func:`resolve_index_dir` picks the folder of indexes (``--index-dir``,
``$CBIR_INDEX_DIR``, an existing ``./indexes``, the per-user data folder);
:func:`index_path` joins it with a checked name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cbir.errors import UsageError

ENV_INDEX_DIR = "CBIR_INDEX_DIR"
#: What an index name may hold: letters, digits, '-' and '_' (it names a folder).
_NAME_PATTERN = re.compile(r"[\w-]{1,100}")
LOCAL_INDEX_DIR = "indexes"


def default_index_dir() -> Path:
    """Where named indexes live when no folder is given; see :func:`resolve_index_dir`."""
    return resolve_index_dir(None)


def resolve_index_dir(index_dir: str | os.PathLike | None = None) -> Path:
    """The folder of named indexes: the one place that decides it.

    In order: ``index_dir`` if given; ``$CBIR_INDEX_DIR`` if set; ``./indexes``
    only where that folder already exists in the current directory (a project
    that keeps its indexes beside it); else the per-user data folder
    (``platformdirs.user_data_dir("cbir")/indexes``, e.g.
    ``~/.local/share/cbir/indexes``). ``~`` is expanded. Nothing is created
    here, so indexing a photo folder from inside it leaves no ``indexes/`` there.
    """
    if index_dir is not None and str(index_dir) != "":
        return Path(os.path.expanduser(os.fspath(index_dir)))
    env = os.environ.get(ENV_INDEX_DIR)
    if env:
        return Path(os.path.expanduser(env))
    if Path(LOCAL_INDEX_DIR).is_dir():
        return Path(LOCAL_INDEX_DIR).absolute()
    import platformdirs

    return Path(platformdirs.user_data_dir("cbir", appauthor=False)) / "indexes"


def check_index_name(name: str) -> str:
    """Return ``name`` if it is a valid index name (letters, digits, ``-``, ``_``; no leading ``-``), else :class:`UsageError`."""
    # A leading '-' would read as an option in every other command (cbir info -x).
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name) or name.startswith("-"):
        raise UsageError(
            f"invalid index name {name!r}: use 1 to 100 letters, digits, '-' or '_', not starting with '-' "
            "(no spaces, dots or slashes)"
        )
    return name


def name_for_folder(folder: str | os.PathLike) -> str:
    """The default index name for ``folder``: its name, other characters replaced by ``-``."""
    base = Path(os.path.abspath(os.fspath(folder))).name
    name = re.sub(r"[^\w-]+", "-", base).strip("-")[:100]
    return name or "images"


def index_path(name: str, index_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the index called ``name`` (see :func:`resolve_index_dir` and :func:`check_index_name`)."""
    return resolve_index_dir(index_dir) / check_index_name(name)


def is_under(path: str, root: str) -> bool:
    """Whether absolute ``path`` is ``root`` or lies below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
