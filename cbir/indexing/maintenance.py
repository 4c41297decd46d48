"""Keeping an index in step with the disk: entries of files that are gone, removals
remembered across updates, and deleting a whole index."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cbir.errors import IndexNotFoundError, UsageError
from cbir.progress import SILENT, Progress
from cbir.store.directory import CATALOGUE_FILE, LOCK_FILE, IndexStore, WriteLock, not_found_message
from cbir.store.manifest import MANIFEST_FILE
from cbir.store.locations import index_path, is_under
from cbir.store.writer import IndexWriter, open_writer

logger = logging.getLogger(__name__)


def without_removed(writer: IndexWriter, folder: Path, files: list[Path], include_removed: bool) -> list[Path]:
    """``files`` less what ``cbir remove`` took out below ``folder`` (an update through ``writer``).

    Removals at or above ``folder`` (indexing a removed folder by name), and
    with ``include_removed`` those below it, are asked back: they are
    forgotten, and their files indexed again.
    """
    removed = writer.store.removed_paths()
    if not removed:
        return files
    root = str(folder)
    # Indexing a removed folder (or one inside it) by name asks for it back.
    asked_back = [p for p in removed if is_under(root, p) or (include_removed and is_under(p, root))]
    if asked_back:
        writer.set_removed_paths([p for p in removed if p not in asked_back])
    honoured = [p for p in removed if p not in asked_back]
    if not honoured:
        return files
    kept = [f for f in files if not any(is_under(str(f), p) for p in honoured)]
    if len(kept) < len(files):
        logger.info("left out %d file(s) removed earlier with cbir remove", len(files) - len(kept))
    return kept


def prune_missing(
    name: str,
    index_dir: str | os.PathLike | None = None,
    wait: bool = False,
    dry_run: bool = False,
    progress: Progress = SILENT,
) -> list[str]:
    """Drop the rows (indexed and skipped) of files that no longer exist; return their paths, sorted.

    Only the existence of each path is checked: nothing is read or re-embedded.
    With ``dry_run`` nothing changes (and no write lock is taken). ``progress``
    follows the snapshot's update.
    """
    path = index_path(name, index_dir)
    if dry_run:
        with IndexStore.open(path) as store:
            rows, skipped = _gone(store.catalogue)
    else:
        with open_writer(path, wait=wait, create=False, progress=progress) as writer:
            rows, skipped = _gone(writer.catalogue)
            if rows or skipped:
                writer.remove([row.id for row in rows], skipped)
    return sorted([row.path for row in rows] + skipped)


def _gone(catalogue) -> tuple[list, list[str]]:
    """Rows and skipped-file records whose path no longer exists."""
    rows = [row for row in catalogue.image_rows() if not os.path.exists(row.path)]
    skipped = [path for path, _reason in catalogue.skipped() if not os.path.exists(path)]
    return rows, skipped


def delete_index(name: str, index_dir: str | os.PathLike | None = None, wait: bool = False) -> Path:
    """Delete the index ``name`` (its folder and everything in it); returns the path it had.

    Takes the write lock first, so an index being written is not pulled away
    from its writer (``wait`` waits for it). The folder is renamed out of the
    way before it is removed: readers and ``cbir list`` never see half of it.

    Raises
    ------
    IndexNotFoundError, IndexLockedError, UsageError (a folder that is not a cbir index)
    """
    path = index_path(name, index_dir)
    if not path.is_dir():
        raise IndexNotFoundError(not_found_message(path))
    if not any((path / marker).exists() for marker in (MANIFEST_FILE, CATALOGUE_FILE, LOCK_FILE)):
        raise UsageError(f"{path} does not look like a cbir index; not deleting it")
    lock = WriteLock(path, wait=wait)
    trash = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    try:
        os.replace(path, trash)
    except OSError as exc:
        raise UsageError(f"cannot delete index {name!r}: {exc.strerror or exc}") from None
    finally:
        lock.release()
    shutil.rmtree(trash, ignore_errors=True)
    return path
