"""An index on disk: one directory holding the manifest, catalogue, vectors and model.

Layout of ``indexes/NAME/``::

    manifest.json        extractor config, dimension, metric, index type, versions
    catalogue.sqlite     paths, stats, hashes, labels, vectors, skipped files
    vectors-N.faiss      the FAISS index; N grows with every save
    model/               learned extractor state (weights, PCA arrays)
    .lock                held by the one process allowed to write

The catalogue is the source of truth and is committed batch by batch; the
FAISS file is a snapshot of it, written under a new name and then recorded in
the catalogue in one transaction, so a crash at any moment leaves either the
old snapshot or the new one in force, never a half-written file. Readers
patch an out-of-date snapshot with what the catalogue committed since, so
they always see a consistent, committed state.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any


from cbir.store.catalogue import Catalogue
from cbir.store.manifest import FORMAT, FORMAT_VERSION, METRIC, MANIFEST_FILE, package_versions, read_manifest, write_manifest
from cbir.store.snapshot_record import snapshot_factory, vectors_are_current
from cbir.store.locations import (
    ENV_INDEX_DIR,
    is_under,
    resolve_index_dir,
)
from cbir.fileio import file_sha256
from cbir.errors import (
    CbirError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadOnlyError,
)

logger = logging.getLogger(__name__)

CATALOGUE_FILE = "catalogue.sqlite"
MODEL_DIR = "model"
LOCK_FILE = ".lock"

#: Files and folders taken out with ``cbir remove``: an update of a folder above them leaves them out.
_META_REMOVED = "removed_paths"
#: The folders given to ``cbir index``: a file is served only while its real path lies below one.
_META_ROOTS = "indexed_roots"


def not_found_message(path: Path) -> str:
    """``no index named X``: where cbir looked, what is there, and how to look elsewhere."""
    known = ", ".join(p.name for p in list_indexes(path.parent)) or "none"
    return (
        f"no index named {path.name!r} in {path.parent.absolute()} (indexes there: {known}); "
        f"to look elsewhere, pass --index-dir or set ${ENV_INDEX_DIR}"
    )


def is_index(path: Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def list_indexes(index_dir: str | os.PathLike | None = None) -> list[Path]:
    """Index directories (those with a manifest) in ``index_dir``, sorted by name."""
    root = resolve_index_dir(index_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_index(p))


class WriteLock:
    """An exclusive ``flock`` on ``.lock``: one writer per index, released on exit or crash."""

    def __init__(self, directory: Path, wait: bool = False):
        self.path = Path(directory) / LOCK_FILE
        self._release_guard = threading.Lock()
        try:
            self._file = open(self.path, "a+")
        except OSError as exc:
            raise IndexReadOnlyError(
                f"index {Path(directory).name!r} is read-only here: cannot write in {directory} "
                f"({exc.strerror or exc}); it can still be queried"
            ) from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise IndexLockedError(
                    f"index {Path(directory).name!r} is being written by {holder}; wait for it to finish (or use --wait)"
                ) from None
            raise
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"cbir process {os.getpid()}")
        self._file.flush()

    def is_current(self) -> bool:
        """Whether the lock file held is still the one in the folder (a failed first build deletes its folder)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino
        except (OSError, ValueError):
            return False

    def release(self) -> None:
        """Give the lock up; safe to call again, or from another thread."""
        with self._release_guard:
            if not self._file.closed:
                fcntl.flock(self._file, fcntl.LOCK_UN)
                self._file.close()


def lock_holder(directory: Path) -> str | None:
    """Who holds the write lock on ``directory`` (``None`` if nobody), without taking it."""
    try:
        with open(Path(directory) / LOCK_FILE) as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return file.read().strip() or "another process"
            fcntl.flock(file, fcntl.LOCK_UN)
            return None
    except OSError:
        return None


class IndexStore:
    """An index directory, opened for reading or (holding the lock) for writing.

    Use :meth:`open` or :meth:`create`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], catalogue: Catalogue, lock: WriteLock | None):
        self.path = Path(path)
        self.manifest = manifest
        self.catalogue = catalogue
        self._lock = lock
        self._embedder = None

    # -- opening -----------------------------------------------------------
    @classmethod
    def open(cls, path: Path, writable: bool = False, wait: bool = False) -> "IndexStore":
        """Open an existing index, checking its manifest, catalogue and model files.

        Raises
        ------
        IndexNotFoundError, IndexCorruptError, IndexLockedError
        """
        path = Path(path)
        if not path.is_dir():
            raise IndexNotFoundError(not_found_message(path))
        if not writable and not is_index(path):
            builder = lock_holder(path)
            if builder is not None:
                raise IndexLockedError(f"index {path.name!r} is being built by {builder}; query it once that run has finished")
        lock = WriteLock(path, wait=wait) if writable else None
        try:
            return cls.open_locked(path, lock)
        except BaseException:
            if lock:
                lock.release()
            raise

    @classmethod
    def open_locked(cls, path: Path, lock: WriteLock | None) -> "IndexStore":
        """:meth:`open` with the write ``lock`` already held by the caller (``None``: read only)."""
        path = Path(path)
        manifest = read_manifest(path)
        # Readers never write: a read-only connection works in a read-only
        # folder, and threads may share it (Searcher serialises its use).
        catalogue = Catalogue(path / CATALOGUE_FILE, read_only=lock is None, check_same_thread=lock is not None)
        # Model files are hashed only when the embedder is loaded (see
        # embedder()): listing or describing an index reads no model.
        return cls(path, manifest, catalogue, lock)

    @classmethod
    def create(
        cls,
        path: Path,
        embedder,
        factory: str,
        search_params: dict[str, int],
        lock: WriteLock,
        index_type: str,
        extra: dict[str, Any] | None = None,
    ) -> "IndexStore":
        """Write a new index's model state, catalogue and (last) manifest into ``path``.

        ``path`` must exist and ``lock`` must be held on it; ``embedder`` must be fitted.
        """
        path = Path(path)
        model_dir = path / MODEL_DIR
        if model_dir.exists():
            shutil.rmtree(model_dir)
        embedder.save(model_dir)
        catalogue = Catalogue(path / CATALOGUE_FILE, create=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": path.name,
            "embedder": embedder.get_config(),
            "dim": int(embedder.dim),
            "metric": METRIC,
            "index_type": index_type,
            "factory": factory,
            "search_params": search_params,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "model_files": {
                str(p.relative_to(path)): file_sha256(p) for p in sorted(model_dir.rglob("*")) if p.is_file()
            },
            # Outside files the embedding came from (e.g. CNN weights), for the record.
            "weights_files": {str(p): file_sha256(p) for p in embedder.extractor.weights_files()},
            **(extra or {}),
        }
        # The manifest goes last: a directory without one is an unfinished creation.
        write_manifest(path, manifest)
        store = cls(path, manifest, catalogue, lock)
        store._embedder = embedder
        return store

    def close(self) -> None:
        self.catalogue.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- properties --------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def model_dir(self) -> Path:
        """The embedder's saved state (what workers and Ray actors build their copy from)."""
        return self.path / MODEL_DIR

    @property
    def factory(self) -> str:
        return self.manifest["factory"]

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def describe(self) -> dict[str, Any]:
        """What ``cbir info`` and ``cbir list`` show: config, counts, versions (no model is loaded)."""
        from cbir.features.pipeline import Embedder

        manifest = self.manifest
        try:
            extractor = Embedder.from_config(manifest["embedder"]).describe()
        except CbirError as exc:
            raise IndexCorruptError(f"index {self.name!r} has an unusable extractor config: {exc}") from None
        return {
            "name": self.name,
            "path": str(self.path.resolve()),
            "extractor": extractor,
            "embedder": manifest["embedder"],
            "dim": manifest["dim"],
            "metric": manifest["metric"],
            "index_type": manifest.get("index_type", manifest["factory"]),
            "factory": manifest["factory"],
            # The FAISS file in force: differs from the manifest's while a rebuild is due.
            "vectors_factory": snapshot_factory(self),
            "images": self.catalogue.count_images(),
            # Of the images, frames of videos (each video indexed as several frames).
            **dict(zip(("videos", "frames"), self.catalogue.video_counts())),
            "skipped": self.catalogue.count_skipped(),
            "created": manifest.get("created"),
            "versions": manifest.get("versions", {}),
            "vectors_current": vectors_are_current(self),
            "removed_paths": self.removed_paths(),
        }

    def _check_model_files(self) -> None:
        """Each model file hashed once, against the manifest, before the embedder loads it."""
        for relative, expected in self.manifest.get("model_files", {}).items():
            file = self.path / relative
            if not file.is_file():
                raise IndexCorruptError(f"index {self.name!r} is missing {relative}; rebuild it")
            if file_sha256(file) != expected:
                raise IndexCorruptError(f"index {self.name!r}: {relative} changed since the index was built; rebuild it")

    def embedder(self, runtime_overrides: dict[str, Any] | None = None):
        """The :class:`~cbir.features.pipeline.Embedder` the collection was embedded with, state loaded.

        ``runtime_overrides`` may change the extractor's ``runtime_params``
        (how vectors are computed, not what they are) on first use.
        """
        if self._embedder is None:
            from cbir.features.pipeline import Embedder

            config = self.manifest["embedder"]
            if runtime_overrides:
                extractor = config["extractor"]
                config = {**config, "extractor": {**extractor, "params": {**extractor["params"], **runtime_overrides}}}
            try:
                embedder = Embedder.from_config(config)
            except CbirError as exc:
                raise IndexCorruptError(f"index {self.name!r} has an unusable extractor config: {exc}") from None
            self._check_model_files()
            self._embedder = embedder.load_state(self.model_dir)
        return self._embedder

    # -- removals remembered -----------------------------------------------
    def removed_paths(self) -> list[str]:
        """Absolute paths (files or folders) taken out with ``cbir remove``, sorted."""
        try:
            paths = json.loads(self.catalogue.get_meta(_META_REMOVED, "[]"))
        except json.JSONDecodeError:
            raise IndexCorruptError(f"index {self.name!r}: the list of removed paths is unreadable") from None
        return [str(p) for p in paths]

    def update_manifest(self, **changes: Any) -> None:
        """Change manifest entries and write the manifest (writers only): the one place after creation."""
        if not self.writable:
            raise RuntimeError("update_manifest needs an index opened for writing")
        self.manifest.update(changes)
        write_manifest(self.path, self.manifest)

    def set_removed_paths(self, paths) -> None:
        """Record the removed paths (writers only; call inside a catalogue transaction to commit with rows)."""
        if not self.writable:
            raise RuntimeError("set_removed_paths needs an index opened for writing")
        self.catalogue.set_meta(_META_REMOVED, json.dumps(_outermost(map(str, paths))))

    # -- the folders indexed -----------------------------------------------
    def indexed_roots(self) -> list[str]:
        """The folders indexed into this index (absolute, as stored), outermost only.

        Recorded by :meth:`record_indexed_root`; an index built before that
        was recorded gets the folders that directly hold its images.
        """
        recorded = self.catalogue.get_meta(_META_ROOTS)
        if recorded is not None:
            try:
                return [str(p) for p in json.loads(recorded)]
            except json.JSONDecodeError:
                raise IndexCorruptError(f"index {self.name!r}: the list of indexed folders is unreadable") from None
        return _outermost(folder.rstrip(os.sep) or os.sep for folder in self.catalogue.image_folders())

    def record_indexed_root(self, folder: str) -> None:
        """Add ``folder`` to :meth:`indexed_roots` (writers only)."""
        if not self.writable:
            raise RuntimeError("record_indexed_root needs an index opened for writing")
        roots = self.indexed_roots() if self.catalogue.get_meta(_META_ROOTS) is not None or self.catalogue.count_images() else []
        if not any(is_under(folder, root) for root in roots):
            self.catalogue.set_meta(_META_ROOTS, json.dumps(_outermost([*roots, folder])))


def _outermost(paths) -> list[str]:
    """``paths`` sorted, without those below another one (a folder covers what is below it)."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(is_under(path, root) for root in kept):
            kept.append(path)
    return kept


