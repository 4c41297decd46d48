"""Keeping an index in step with the disk: entries of files that are gone, and deleting a whole index.

(Removals remembered across updates are applied by the plan:
:func:`cbir.indexing.plan.honour_removed`.)"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cbir.errors import IndexNotFoundError, UsageError
from cbir.progress import SILENT, Progress
from cbir.store.directory import CATALOGUE_FILE, LOCK_FILE, IndexStore, WriteLock, not_found_message
from cbir.store.manifest import MANIFEST_FILE
from cbir.store.locations import index_path
from cbir.store.writer import open_writer

logger = logging.getLogger(__name__)


def prune_missing(
    name: str,
    index_dir: str | os.PathLike | None = None,
    wait: bool = False,
    dry_run: bool = False,
    progress: Progress = SILENT,
) -> list[str]:
    """Drop the rows (indexed and skipped) of files that no longer exist; return their paths, sorted,
    each once (a video's frames are rows of one file).

    Only the existence of each path is checked: nothing is read or re-embedded.
    With ``dry_run`` nothing changes (and no write lock is taken). ``progress``
    follows the snapshot's update.
    """
    path = index_path(name, index_dir)
    if dry_run:
        with IndexStore.open(path) as store:
            rows, skipped = _gone(store.catalogue.image_rows(), store.catalogue.skipped())
    else:
        with open_writer(path, wait=wait, create=False, progress=progress) as writer:
            rows, skipped = _gone(writer.all_rows(), writer.all_skipped())
            if rows or skipped:
                writer.remove([row.id for row in rows], skipped)
            writer.finish()
    return sorted({row.path for row in rows} | set(skipped))


def _gone(image_rows, skipped_files) -> tuple[list, list[str]]:
    """Rows and skipped-file records whose path no longer exists."""
    rows = [row for row in image_rows if not os.path.exists(row.path)]
    skipped = [path for path, _reason in skipped_files if not os.path.exists(path)]
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
