"""What an indexing run will do, decided before anything is written: pure functions over values.

:func:`plan_update` compares a folder scan (with each file's stat) against the
catalogue rows under that folder (mark and sweep: new, changed, unchanged,
gone, still skipped) and returns an :class:`IndexPlan`; the run then only
carries it out. Nothing here opens a file or a database, so each rule is
tested on plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cbir.errors import UsageError
from cbir.store.dba import dba_config
from cbir.store.locations import is_under


#: ``index_folder(dba=KEEP)``: the default for a new index, the index's own setting for an existing one.
KEEP = "keep"

#: Reasons a file could not be read that may pass without the file changing (a permission fixed,
#: a share back, a disk error retried, ``$CBIR_MAX_FILE_MB`` raised): such files are tried again
#: on every run, whatever their stat. Cheap: the size cap is checked before anything is read.
TRANSIENT_REASONS = (
    " mb, limit ",  # (lower case, as compared) the file-size cap's reason (cbir.compute.work), not the decoder's pixel cap
    "permission denied",
    "operation not permitted",
    "input/output error",
    "stale file handle",
    "resource temporarily unavailable",
    "transport endpoint is not connected",
    "connection timed out",
    "no such device",
    "host is down",
)

#: A file's ``(size, mtime_ns)``, or ``None`` where it cannot be stat'ed (the loader records why).
Stat = tuple[int, int] | None


@dataclass
class IndexPlan:
    """Files to embed, with the content hash each may still match, and what to remove."""

    todo: list[Path]
    #: Changed files and their stored hash: confirmed by content before re-embedding.
    known_sha256: dict[Path, str]
    unchanged: int
    still_skipped: int
    removed_ids: list[int]
    removed_skipped: list[str]
    #: Rows kept because the folder holding them could not be listed (unknown, not gone).
    kept_unlisted: int = 0
    #: Skipped files tried again because their reason may have passed.
    retried: int = 0


def is_transient(reason: str) -> bool:
    """Whether a skip reason may pass by itself (see :data:`TRANSIENT_REASONS`)."""
    reason = reason.lower()
    return any(word in reason for word in TRANSIENT_REASONS)


def stat_files(files: Sequence[Path]) -> dict[Path, Stat]:
    """The one effect the plan needs: each file's size and mtime."""
    stats: dict[Path, Stat] = {}
    for file in files:
        try:
            st = file.stat()
        except OSError:
            stats[file] = None
        else:
            stats[file] = (st.st_size, st.st_mtime_ns)
    return stats


def plan_update(
    stats: Mapping[Path, Stat],
    rows: Mapping[str, Any],
    skipped: Mapping[str, tuple[int, int, str]],
    unlisted: Sequence[str] = (),
) -> IndexPlan:
    """Mark and sweep: the scan's files (``stats``, in scan order) against the catalogue rows under the folder.

    ``rows`` maps stored path -> row (with ``id``, ``size``, ``mtime_ns``,
    ``sha256``, and ``path`` where it differs from the key): a video's frames are several rows of one file, unchanged,
    changed or gone together. ``skipped`` maps path -> ``(size, mtime_ns, reason)``.
    Rows and skip records under an ``unlisted`` folder are kept: the folder may be back next time.
    """
    todo: list[Path] = []
    known: dict[Path, str] = {}
    unchanged = still_skipped = retried = 0
    present: set[str] = set()
    # A row's file is its ``path`` where it has one (a video's frames: the video), else its key.
    file_of = {key: getattr(row, "path", key) for key, row in rows.items()}
    row_of_file = {file_of[key]: row for key, row in rows.items()}  # a video: any one of its frames
    for file, stat in stats.items():
        key = str(file)
        present.add(key)
        if stat is None:
            todo.append(file)  # let the loader record why it cannot be read
            continue
        row = row_of_file.get(key)
        if row is not None:
            if (row.size, row.mtime_ns) == stat:
                unchanged += 1
            else:
                todo.append(file)
                known[file] = row.sha256
            continue
        previous = skipped.get(key)
        if previous is not None and previous[:2] == stat:
            if not is_transient(previous[2]):
                still_skipped += 1
                continue
            retried += 1
        todo.append(file)

    def unknown(path: str) -> bool:
        return any(is_under(path, folder) for folder in unlisted)

    gone_rows = [(file_of[key], row) for key, row in rows.items() if file_of[key] not in present]
    gone_skipped = [key for key in skipped if key not in present]
    kept = sum(1 for key, _ in gone_rows if unknown(key))
    return IndexPlan(
        todo=todo,
        known_sha256=known,
        unchanged=unchanged,
        still_skipped=still_skipped,
        removed_ids=[row.id for key, row in gone_rows if not unknown(key)],
        removed_skipped=[key for key in gone_skipped if not unknown(key)],
        kept_unlisted=kept,
        retried=retried,
    )


@dataclass
class RemovedPaths:
    """What ``cbir remove`` took out, applied to one run: files left out, and the list to record if it changed."""

    files: list[Path]
    record: list[str] | None = None
    left_out: int = 0


def honour_removed(removed: Sequence[str], folder: Path, files: list[Path], include_removed: bool) -> RemovedPaths:
    """``files`` less what ``cbir remove`` took out below ``folder``.

    Removals at or above ``folder`` (indexing a removed folder by name), and
    with ``include_removed`` those below it, are asked back: they are
    forgotten (``record`` is the new list), and their files indexed again.
    """
    if not removed:
        return RemovedPaths(files)
    root = str(folder)
    asked_back = [p for p in removed if is_under(root, p) or (include_removed and is_under(p, root))]
    honoured = [p for p in removed if p not in asked_back]
    record = honoured if asked_back else None
    if not honoured:
        return RemovedPaths(files, record)
    kept = [f for f in files if not any(is_under(str(f), p) for p in honoured)]
    return RemovedPaths(kept, record, len(files) - len(kept))


def dba_setting(dba: Any, alpha: float, created: bool, collection_size: int) -> Any:
    """The DBA config a run records (``KEEP``: leave the index's own), or :class:`UsageError`.

    A new index gets :data:`cbir.ann.rerank.DEFAULT_DBA` unless told otherwise;
    an explicit ``k`` must be smaller than the collection.
    """
    from cbir.ann.rerank import DEFAULT_DBA

    if dba == KEEP:
        return dba_config(DEFAULT_DBA, alpha) if created else KEEP
    config = dba_config(dba, alpha)
    if config is not None and config["k"] >= collection_size:
        raise UsageError(f"--dba {config['k']} needs more than {config['k']} images; the collection has {collection_size}")
    return config
