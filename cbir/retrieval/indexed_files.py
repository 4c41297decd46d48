"""Opening the file of an indexed image, only while it is still the file that was indexed.

A catalogue path is a name, and what a name points at can change after
indexing: a photo replaced by a symbolic link to ``/etc/shadow`` in a shared
folder must not be served as that photo. So a file is opened first, and the
open file itself is checked (no name is looked up twice): a regular file,
with the size and modification time the catalogue recorded (or, if those
changed, the same content), whose real path lies below one of the folders
that were indexed.

It also lists them without a query (:func:`page_of_images`): browsing a
collection page by page, by folder or label.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, BinaryIO, Sequence

from cbir.store.catalogue import Catalogue, ImageFilter, ImageRow
from cbir.errors import IndexedFileError, UsageError
from cbir.retrieval.results import Match
from cbir.fileio import stream_sha256
from cbir.store.locations import is_under


def open_indexed_file(row: ImageRow, roots: Sequence[str]) -> BinaryIO:
    """The file of ``row`` opened for reading, checked as the module says.

    Raises :class:`~cbir.errors.IndexedFileError` (its message names the
    catalogue path) if the file is gone, unreadable, not a regular file,
    changed since it was indexed, or outside ``roots``.
    """
    try:
        # O_NONBLOCK: a FIFO put in the photo's place opens at once (and is then refused), never hangs.
        fd = os.open(row.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise IndexedFileError(f"the file of image {row.id} is no longer there: {row.path}") from None
    except OSError as exc:
        raise IndexedFileError(f"the file of image {row.id} cannot be read: {row.path}: {exc.strerror or exc}") from None
    file = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IndexedFileError(f"the file of image {row.id} is no longer a regular file: {row.path}")
        real = _real_path(fd, row.path)
        if not any(is_under(real, root) for root in roots):
            raise IndexedFileError(f"the file of image {row.id} now lies outside the indexed folders: {row.path}")
        if (info.st_size, info.st_mtime_ns) != (row.size, row.mtime_ns) and not _same_content(file, row):
            raise IndexedFileError(f"the file of image {row.id} changed since it was indexed (run cbir index again): {row.path}")
        file.seek(0)
        return file
    except BaseException:
        file.close()
        raise


def _real_path(fd: int, path: str) -> str:
    """Where the open file really is: the kernel's name for it where there is one, else the resolved path."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # the file opened, not what the name points at by now
    except OSError:
        return os.path.realpath(path)


def _same_content(file: BinaryIO, row: ImageRow) -> bool:
    """Whether ``file`` holds what was indexed (a copy restored with a new time, a touched file)."""
    info = os.fstat(file.fileno())
    if info.st_size != row.size:
        return False
    file.seek(0)
    return stream_sha256(file) == row.sha256


@dataclass(frozen=True)
class ImagePage:
    """One page of the indexed images a filter lets through, by path: the collection browsed without a query."""

    offset: int
    #: Every image the filter lets through (all pages together).
    total: int
    #: Ranked by position in the whole listing (``offset + 1`` first); no score.
    images: list[Match]

    def to_dict(self) -> dict[str, Any]:
        results = []
        for match in self.images:
            item = match.to_dict()
            del item["score"]  # nothing was compared
            results.append(item)
        return {"offset": self.offset, "total": self.total, "results": results}


def page_of_images(catalogue: Catalogue, image_filter: ImageFilter | None, offset: int, limit: int) -> ImagePage:
    """``limit`` indexed images from ``offset`` on, in path order, with what the catalogue knows of each."""
    if offset < 0 or limit < 1:
        raise UsageError(f"a page starts at offset 0 or later and holds at least 1 image; got offset {offset}, limit {limit}")
    total, rows = catalogue.image_page(image_filter or ImageFilter(), offset, limit)
    metadata = catalogue.metadata([row.id for row in rows])  # no GPS: a listing never carries a location
    images = []
    for position, row in enumerate(rows, start=offset + 1):
        about = metadata.get(row.id)
        images.append(
            Match(
                position, row.path, None, row.id, row.label, os.path.exists(row.path),
                about.taken if about else None, about.camera if about else None, size=row.size, mtime_ns=row.mtime_ns,
                time=row.time,
            )
        )
    return ImagePage(offset, total, images)
