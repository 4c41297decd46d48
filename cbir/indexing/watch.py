"""Keep an index up to date with its folder: watch it, and turn each batch of changes into one incremental run.

:func:`watch_folder` starts a file-system watcher (watchfiles: inotify,
FSEvents, ReadDirectoryChangesW), then rescans the whole folder once (what
changed while nothing watched), then waits. The watcher groups events until
the folder has been quiet for ``step_ms`` (at most ``debounce_ms``);
:func:`plan_batch` turns such a group into the paths it touched (a pure
function), and each batch is one :func:`cbir.indexing.run.index_folder` run
restricted to those paths (``only=``). So there is one pipeline and one writer:
additions and changes are embedded in batches at the indexer's throughput,
a moved file keeps its stored vector (its content hash is known), deletions
remove rows, every batch of vectors is committed with its rows, and a
server sees the change at the run's commit.

Crash-safe and resumable as ``cbir index`` is: a watcher killed mid-batch
keeps what it committed, and the rescan at the next start finishes the rest.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

from cbir.extras import import_optional
from cbir.images.scan import indexable_extensions, normalize_path
from cbir.indexing.summary import IndexSummary
from cbir.progress import SILENT, Progress
from cbir.store.locations import index_path, is_under, name_for_folder

#: The watcher's defaults: a batch closes once the folder has been quiet this long (ms)...
DEFAULT_STEP_MS = 300
#: ...or at the latest this long after its first event (ms), so a long copy is indexed as it goes.
DEFAULT_DEBOUNCE_MS = 5_000

#: Options of :func:`~cbir.indexing.run.index_folder` that choose how a new index is built:
#: given to the first run only (each batch's run updates the index as it is).
FIRST_RUN_OPTIONS = ("embedder", "options", "index_type", "pca_train_folder", "fit_sample", "dba", "dba_alpha", "local_features", "ray")

# watchfiles.Change values (the enum is not imported here, so the plan stays a function of plain values).
ADDED, MODIFIED, DELETED = 1, 2, 3


@dataclass(frozen=True)
class WatchBatch:
    """What one batch of file-system events asks of the index."""

    #: Files and folders to bring up to date (each scanned, or its rows removed if gone), sorted.
    paths: list[str] = field(default_factory=list)
    added: int = 0
    modified: int = 0
    deleted: int = 0

    @property
    def empty(self) -> bool:
        return not self.paths


def plan_batch(
    changes: Iterable[tuple[int, str]],
    folder: str,
    ignored: Collection[str] = (),
    maybe_folder: Callable[[str], bool] = lambda path: False,
) -> WatchBatch:
    """The paths a batch of ``(change, path)`` events touched, for one restricted run.

    Kept: image and video files (by suffix) at or below ``folder``, and other paths for
    which ``maybe_folder`` holds (a folder created, moved in or away: its
    contents are scanned, or its rows removed). Left out: paths under
    ``ignored`` (the index's own folder, when it lies inside the watched one),
    and paths below another kept path (the scan of that one covers them).
    """
    counts = {ADDED: 0, MODIFIED: 0, DELETED: 0}
    touched: set[str] = set()
    readable = indexable_extensions()  # once a batch: it looks for the formats extra's packages each call
    for change, path in changes:
        if not is_under(path, folder) or any(is_under(path, root) for root in ignored):
            continue
        if path == folder or not (os.path.splitext(path)[1].lower() in readable or maybe_folder(path)):
            continue
        touched.add(path)
        counts[int(change)] = counts.get(int(change), 0) + 1
    kept = sorted(path for path in touched if not _below_another(path, touched))
    return WatchBatch(kept, counts[ADDED], counts[MODIFIED], counts[DELETED])


def _below_another(path: str, paths: set[str]) -> bool:
    parent = os.path.dirname(path)
    while parent != path:
        if parent in paths:
            return True
        path, parent = parent, os.path.dirname(parent)
    return False


@dataclass
class WatchReport:
    """What a watcher did, batch by batch (``batch`` is ``None`` for the rescan at its start)."""

    runs: list[tuple[WatchBatch | None, IndexSummary]] = field(default_factory=list)


def watch_folder(
    folder: str | os.PathLike,
    name: str | None = None,
    index_dir: str | os.PathLike | None = None,
    *,
    step_ms: int = DEFAULT_STEP_MS,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    stop_event: threading.Event | None = None,
    max_batches: int | None = None,
    on_run: Callable[[WatchBatch | None, IndexSummary], None] | None = None,
    progress: Progress = SILENT,
    force_polling: bool | None = None,
    rust_timeout_ms: int = 1_000,
    **index_options: Any,
) -> WatchReport:
    """Index ``folder`` into ``name``, then keep the index up to date until stopped.

    The watcher is in place before the first (full) run starts, so nothing
    that changes during it is missed. Each later batch of events is one run of
    :func:`~cbir.indexing.run.index_folder` restricted to the paths it touched,
    with ``index_options`` (a new index's build options, see
    :data:`FIRST_RUN_OPTIONS`, go to the first run only). ``on_run`` is called
    after every run. Stops when ``stop_event`` is set or after ``max_batches``
    batches (tests), or with :class:`KeyboardInterrupt` on Ctrl-C, raised
    after the run in progress committed what it had (the next start's rescan
    does the rest). Waits for another writer of the index rather than failing.
    ``force_polling``: list the folder every 300 ms instead of waiting for the
    OS's events (network shares); ``None`` lets watchfiles decide
    (``$WATCHFILES_FORCE_POLLING``).

    Raises
    ------
    MissingExtraError
        Without watchfiles (``pip install 'cbir[watch]'``).
    """
    from cbir.indexing.run import index_folder

    watchfiles = import_optional("watchfiles", "watchfiles", "watch", "watching a folder")
    folder = normalize_path(folder)
    if not folder.is_dir():
        from cbir.errors import UsageError

        raise UsageError(f"folder does not exist: {folder}")
    name = name if name is not None else name_for_folder(folder)
    own = str(index_path(name, index_dir))
    batch_options = {k: v for k, v in index_options.items() if k not in FIRST_RUN_OPTIONS}
    report = WatchReport()

    def run(batch: WatchBatch | None) -> None:
        if batch is None:
            summary = index_folder(folder, name, index_dir, wait=True, progress=progress, **index_options)
        else:
            summary = index_folder(folder, name, index_dir, wait=True, progress=progress, only=batch.paths, **batch_options)
        report.runs.append((batch, summary))
        if on_run is not None:
            on_run(batch, summary)

    started = False
    batches = 0
    changes_seen = watchfiles.watch(
        folder,
        step=step_ms,
        debounce=debounce_ms,
        stop_event=stop_event,
        rust_timeout=rust_timeout_ms,
        yield_on_timeout=True,
        force_polling=force_polling,
        watch_filter=None,
        raise_interrupt=True,
    )
    for changes in changes_seen:
        if not started:
            # The watcher holds every event from here on: the full rescan covers what came before.
            run(None)
            started = True
            continue
        if not changes:
            continue
        batch = plan_batch(((int(c), p) for c, p in changes), str(folder), [own], _folder_test(own))
        if batch.empty:
            continue
        run(batch)
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    return report


def _folder_test(index: str) -> Callable[[str], bool]:
    """``maybe_folder`` for :func:`plan_batch`: a folder now, or one the index holds images under (moved away)."""
    indexed: list[str] | None = None

    def maybe_folder(path: str) -> bool:
        nonlocal indexed
        if os.path.isdir(path):
            return True
        if os.path.lexists(path):
            return False
        if indexed is None:
            indexed = _indexed_folders(index)
        prefix = path.rstrip(os.sep) + os.sep
        return any(f.startswith(prefix) for f in indexed)

    return maybe_folder


def _indexed_folders(index: str) -> list[str]:
    from cbir.store.catalogue import Catalogue
    from cbir.store.directory import CATALOGUE_FILE

    path = Path(index, CATALOGUE_FILE)
    if not path.is_file():
        return []
    with Catalogue(path, read_only=True) as catalogue:
        return catalogue.image_folders()
