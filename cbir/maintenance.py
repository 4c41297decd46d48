"""Keeping an index in step with the disk: dropping the entries of files that are gone."""

from __future__ import annotations

import os

from cbir.store import IndexStore, index_path


def prune_missing(
    name: str, index_dir: str | os.PathLike | None = None, wait: bool = False, dry_run: bool = False
) -> list[str]:
    """Drop the rows (indexed and skipped) of files that no longer exist; return their paths, sorted.

    Only the existence of each path is checked: nothing is read or re-embedded.
    With ``dry_run`` nothing changes (and no write lock is taken).
    """
    with IndexStore.open(index_path(name, index_dir), writable=not dry_run, wait=wait) as store:
        catalogue = store.catalogue
        gone_rows = [row for row in catalogue.image_rows() if not os.path.exists(row.path)]
        gone_skipped = [path for path, _reason in catalogue.skipped() if not os.path.exists(path)]
        if not dry_run and (gone_rows or gone_skipped):
            with catalogue.transaction():
                catalogue.remove_ids([row.id for row in gone_rows])
                catalogue.remove_skipped(gone_skipped)
            store.save_vectors()
    return sorted([row.path for row in gone_rows] + gone_skipped)
