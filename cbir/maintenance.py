"""Keeping an index in step with the disk: dropping the entries of files that are gone."""

from __future__ import annotations

import os

from cbir.store import IndexStore, index_path
from cbir.writer import open_writer


def prune_missing(
    name: str, index_dir: str | os.PathLike | None = None, wait: bool = False, dry_run: bool = False
) -> list[str]:
    """Drop the rows (indexed and skipped) of files that no longer exist; return their paths, sorted.

    Only the existence of each path is checked: nothing is read or re-embedded.
    With ``dry_run`` nothing changes (and no write lock is taken).
    """
    path = index_path(name, index_dir)
    if dry_run:
        with IndexStore.open(path) as store:
            rows, skipped = _gone(store.catalogue)
    else:
        with open_writer(path, wait=wait, create=False) as writer:
            rows, skipped = _gone(writer.catalogue)
            if rows or skipped:
                writer.remove([row.id for row in rows], skipped)
    return sorted([row.path for row in rows] + skipped)


def _gone(catalogue) -> tuple[list, list[str]]:
    """Rows and skipped-file records whose path no longer exists."""
    rows = [row for row in catalogue.image_rows() if not os.path.exists(row.path)]
    skipped = [path for path, _reason in catalogue.skipped() if not os.path.exists(path)]
    return rows, skipped
