"""The one place cbir hashes content and writes files atomically.

Every file cbir writes into an index or a training folder is written to a
temporary name in the same folder, flushed to disk and renamed over its
target, so a reader (or a run after a crash) sees the old file or the new
one, never half of one. Bytes and JSON go through :func:`write_bytes_atomic`
and :func:`write_json_atomic`; files another library writes itself (FAISS,
Keras, OpenCV, Matplotlib) go through :func:`atomic_path`.

Hashes are SHA-256 hex digests: :func:`sha256_bytes` for data in memory,
:func:`file_sha256` for a file read in blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from cbir.errors import disk_full_error, is_disk_full

_BLOCK = 1 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex SHA-256 of bytes in memory (image contents, a converted model)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(file: BinaryIO) -> str:
    """Hex SHA-256 of what is left to read in an open binary file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: file.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved over ``path`` on success.

    For files written by another library that takes a file name::

        with atomic_path(target) as temporary:
            faiss.write_index(index, str(temporary))

    The temporary name keeps the target's suffix (Keras and OpenCV choose the
    format by it). After the block the file is fsynced and renamed over
    ``path`` with :func:`os.replace`; if the block raises, or the library did
    not write the file, the temporary file is removed and ``path`` is untouched.
    A full disk becomes :class:`~cbir.errors.DiskFullError` (one line for the CLI).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        if not temporary.is_file():
            raise OSError(f"nothing was written to {temporary}")
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except (OSError, RuntimeError) as exc:  # RuntimeError: FAISS's writers
        if is_disk_full(exc):
            raise disk_full_error(str(path)) from None
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, and rename it over ``path``."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as f:
            f.write(data)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
    """:func:`write_bytes_atomic` of indented JSON (keys sorted unless told otherwise)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def _fsync_folder(folder: Path) -> None:
    # The rename itself survives a power cut only once the folder is synced.
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible everywhere (Windows); the rename is still atomic
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
