"""Finding image files: the folder walk (recursive, sorted, safe against symlink loops, globs, hidden files)
and which suffixes are images cbir can read.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


from cbir.errors import UsageError
from cbir.images.decode import FORMATS_EXTRA_EXTENSIONS, OPTIONAL_EXTENSIONS, readable_extensions
from cbir.images.raw import RAW_EXTENSIONS
from cbir.images.video import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)


#: Image formats cbir cannot read at all: counted in an indexing summary, not silently ignored.
FOREIGN_IMAGE_EXTENSIONS = frozenset({".jxl", ".svg", ".psd", ".xcf", ".ico", ".exr"})
#: Every suffix that names an image, readable here or not.
_IMAGE_LIKE = FOREIGN_IMAGE_EXTENSIONS | FORMATS_EXTRA_EXTENSIONS | frozenset(OPTIONAL_EXTENSIONS)
#: A RAW's JPEG sidecar: the camera's own rendering, indexed instead of the RAW.
_SIDECAR_EXTENSIONS = (".jpg", ".jpeg")



def is_image_path(path: str | os.PathLike) -> bool:
    """Whether the file name has a suffix cbir reads (:func:`readable_extensions`, any letter case), videos included."""
    return os.path.splitext(os.fspath(path))[1].lower() in indexable_extensions()


def indexable_extensions() -> frozenset[str]:
    """What a folder walk indexes: the image suffixes cbir reads and video suffixes (each video as its frames)."""
    return readable_extensions() | VIDEO_EXTENSIONS



def normalize_path(path: str | os.PathLike) -> Path:
    """The one spelling of a path that cbir stores and compares.

    Absolute, ``~`` expanded, with symbolic links resolved in the folders
    above it (a folder given itself is fully resolved) while a file keeps its
    own name. So a collection reached through a symlinked folder, a labels CSV
    beside it and a query all name the same file the same way; folders below
    an indexed root keep the names the walk saw them under.
    """
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(absolute):
        return Path(os.path.realpath(absolute))
    head, tail = os.path.split(absolute)
    return Path(os.path.realpath(head), tail)



@dataclass
class FolderScan:
    """What a folder walk found: the images to read, and image files cbir cannot read, by suffix."""

    images: list[Path]
    unsupported: dict[str, int]
    #: Folders that could not be listed (an unmounted share, a permission): what lies below is unknown, not gone.
    unlisted: list[str] = field(default_factory=list)
    #: RAW files left out because a JPEG with the same stem lies beside them (that JPEG is indexed instead).
    raw_sidecars: int = 0



def find_images(root: str | os.PathLike, **options) -> list[Path]:
    """The image files of :func:`scan_folder` (same arguments)."""
    return scan_folder(root, **options).images



def scan_folder(
    root: str | os.PathLike,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    skip: Sequence[str | os.PathLike] = (),
    within: Sequence[str | os.PathLike] | None = None,
) -> FolderScan:
    """All image files under ``root``, recursively, as absolute paths in sorted order.

    Files and folders whose name starts with ``.`` are left out unless
    ``include_hidden``. ``exclude`` holds glob patterns (``*.png``,
    ``raw/*``, ``*/thumbnails``) matched against each file's or folder's
    path relative to ``root`` and against its name; a matching folder is not
    entered. ``skip`` holds absolute paths (files or folders) to leave out.
    Image files of formats cbir cannot read (HEIC and RAW without the
    ``formats`` extra, JPEG XL...) are counted by suffix in ``unsupported``.
    A RAW file with a JPEG of the same stem (any letter case) in its folder
    is left out, counted in ``raw_sidecars``: one photo, one entry, read
    from the JPEG the camera rendered.

    ``within`` (absolute paths of files or folders under ``root``) limits the
    walk to them: only the folders on the way to them and below them are
    listed, and only files at or below them are kept, so the result is the
    full scan's restricted to those paths, every rule above included (a
    watcher's batch of changed paths costs their folders, not the collection).

    Symbolic links to folders are followed once: a folder already visited (by
    device and inode) is not entered again, so link loops end. Folders that
    cannot be listed are skipped with a warning. A ``root`` that is itself an
    image file gives a one-element list.

    Raises
    ------
    UsageError
        If ``root`` does not exist or is neither a folder nor an image file.
    """
    root = normalize_path(root)
    if root.is_file():
        if not is_image_path(root):
            raise UsageError(f"{root} is not an image file (expected one of {', '.join(sorted(indexable_extensions()))})")
        return FolderScan([root], {})
    if not root.is_dir():
        raise UsageError(f"folder does not exist: {root}")

    skipped_roots = [os.path.abspath(os.fspath(p)) for p in skip]

    def left_out(path: str, name: str) -> bool:
        if not include_hidden and name.startswith("."):
            return True
        if exclude:  # relpath costs more than the rest of a file's scan
            relative = os.path.relpath(path, root)
            if any(fnmatch.fnmatchcase(relative, g) or fnmatch.fnmatchcase(name, g) for g in exclude):
                return True
        return any(path == s or path.startswith(s.rstrip(os.sep) + os.sep) for s in skipped_roots)

    scope = None if within is None else _Scope(within)
    found: list[Path] = []
    unsupported: dict[str, int] = {}
    visited: set[tuple[int, int]] = set()
    readable = indexable_extensions()

    unlisted: list[str] = []
    raw_sidecars = 0

    def on_error(error: OSError) -> None:
        logger.warning("cannot list %s: %s", error.filename, error.strerror or error)
        if error.filename is not None:
            unlisted.append(os.path.abspath(os.fsdecode(error.filename)))

    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=on_error):
        try:
            stat = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in visited:
            subfolders[:] = []
            continue
        visited.add(key)
        subfolders[:] = sorted(d for d in subfolders if not left_out(os.path.join(folder, d), d))
        if scope is not None:
            subfolders[:] = [d for d in subfolders if scope.enters(os.path.join(folder, d))]
        kept = []
        for name in sorted(files):
            if scope is not None and not scope.holds(os.path.join(folder, name)):
                continue
            stem, suffix = os.path.splitext(name)
            suffix = suffix.lower()
            if suffix not in readable and suffix not in _IMAGE_LIKE:
                continue
            if not left_out(os.path.join(folder, name), name):
                kept.append((name, stem.lower(), suffix))
        sidecar_stems = {stem for _, stem, suffix in kept if suffix in _SIDECAR_EXTENSIONS}
        for name, stem, suffix in kept:
            if suffix in RAW_EXTENSIONS and stem in sidecar_stems:
                raw_sidecars += 1
            elif suffix in readable:
                found.append(Path(folder, name))
            else:
                unsupported[suffix] = unsupported.get(suffix, 0) + 1
    return FolderScan(found, dict(sorted(unsupported.items())), sorted(set(unlisted)), raw_sidecars)


class _Scope:
    """The paths a restricted walk covers (see :func:`scan_folder`'s ``within``): set lookups, one per folder level."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.roots = {os.path.abspath(os.fspath(p)) for p in paths}
        self.on_the_way: set[str] = set()
        for root in self.roots:
            parent = os.path.dirname(root)
            while parent not in self.on_the_way and parent != root:
                self.on_the_way.add(parent)
                root, parent = parent, os.path.dirname(parent)

    def holds(self, path: str) -> bool:
        """At or below one of the paths."""
        while True:
            if path in self.roots:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

    def enters(self, folder: str) -> bool:
        """A folder at or below one of the paths, or on the way to one."""
        return folder in self.on_the_way or self.holds(folder)
