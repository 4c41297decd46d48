"""The one way to change an index directory: ``with open_writer(path) as w: w.add(...)``.

An :class:`IndexWriter` owns everything a writer must get right, so callers
(the indexer, ``cbir remove``) only decide *what* to write:

* the lock: one writer per index, taken before anything is looked at, so a
  second writer (with ``wait``) queues behind a first build too;
* creation: a folder without a manifest is an unfinished creation, cleaned
  and rebuilt; if the block fails before anything was committed, the folder
  is removed again (training checkpoints excepted, so training resumes);
* transactions: each :meth:`~IndexWriter.add` or :meth:`~IndexWriter.remove`
  is one catalogue commit, vectors together with their rows;
* the FAISS snapshot: written when the block ends, normally or not (Ctrl-C
  included), so what was committed is searchable without a rebuild.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cbir.store import snapshots
from cbir.store.catalogue import Catalogue, NewImage
from cbir.errors import UsageError
from cbir.progress import SILENT, Progress
from cbir.store.directory import CATALOGUE_FILE, MODEL_DIR, IndexStore, WriteLock, is_index
from cbir.ann.vectors import resolve_index_type

logger = logging.getLogger(__name__)

#: Inside a new index: checkpoints of a training extractor, kept if training is interrupted.
TRAINING_DIR = "training"


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be embedded, and why."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class Restat:
    """A file whose content is unchanged although its size or mtime moved."""

    path: str
    size: int
    mtime_ns: int


def open_writer(path: str | os.PathLike, wait: bool = False, create: bool = True, progress: Progress = SILENT) -> "IndexWriter":
    """An :class:`IndexWriter` for the index folder ``path``; use it in a ``with`` block.

    With ``create=False`` the index must exist (:class:`~cbir.errors.IndexNotFoundError` otherwise).
    ``progress`` follows the snapshot written at the end (DBA's neighbour search can take minutes).
    """
    return IndexWriter(Path(path), wait, create, progress)


class IndexWriter:
    """Exclusive write access to one index folder; see the module docstring.

    Inside the block, :attr:`store` is the open index, or ``None`` for a new
    index until :meth:`create` is called.
    """

    def __init__(self, path: Path, wait: bool = False, create: bool = True, progress: Progress = SILENT):
        self.path = path
        self.progress = progress
        self.wait = wait
        self.may_create = create
        self.store: IndexStore | None = None
        self.created = False
        self._lock: WriteLock | None = None
        #: How the closing snapshot was rebuilt from the stored vectors, if it was (see cbir.store.snapshots.save_vectors).
        self.vectors_rebuilt: str | None = None

    # -- the block -------------------------------------------------------
    def __enter__(self) -> "IndexWriter":
        if not self.may_create:
            self.store = IndexStore.open(self.path, writable=True, wait=self.wait)
            return self
        _check_writable(self.path)
        while self._lock is None:
            made_folder = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                lock = WriteLock(self.path, wait=self.wait)
            except BaseException:
                if made_folder and not is_index(self.path):
                    shutil.rmtree(self.path, ignore_errors=True)
                raise
            if lock.is_current():
                self._lock = lock
            else:  # waited for a first build that failed and removed its folder: start afresh
                lock.release()
        try:
            if is_index(self.path):
                self.store = IndexStore.open_locked(self.path, self._lock)
            else:
                self.created = True
                # An unfinished creation may have left files behind; the
                # training folder stays, so interrupted training resumes.
                for leftover in [
                    self.path / CATALOGUE_FILE,
                    *self.path.glob(CATALOGUE_FILE + "-*"),
                    *self.path.glob("vectors-*.faiss"),
                ]:
                    leftover.unlink(missing_ok=True)
                shutil.rmtree(self.path / MODEL_DIR, ignore_errors=True)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        store, self.store = self.store, None
        failed = exc_type is not None
        # A new index that failed before committing an image is not worth
        # keeping, unless it learned something (a trained model, a fitted PCA):
        # that is kept, and the next run resumes from it.
        discard = failed and self.created and (store is None or (store.catalogue.count_images() == 0 and not _learned(store)))
        try:
            if store is not None and not discard:
                try:
                    self.vectors_rebuilt = snapshots.save_vectors(store, self.progress)
                except Exception:
                    if not failed:
                        raise
                    logger.exception("could not write the vector snapshot; the next run rebuilds it from the catalogue")
                finally:
                    self.progress.stop()
        finally:
            if store is not None:
                store.close()
            self._release()
            if discard:
                self._discard()
            elif not failed and self.created:
                shutil.rmtree(self.training_dir, ignore_errors=True)  # the model now lives in model/

    def _discard(self) -> None:
        if not self.training_dir.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in self.path.iterdir():
            if entry != self.training_dir:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
        logger.warning("training state kept in %s: run the same command again to resume", self.training_dir)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writing ------------------------------------------------------------
    @property
    def training_dir(self) -> Path:
        """Where a learning extractor keeps resumable training state while a new index is made."""
        return self.path / TRAINING_DIR

    def create(self, embedder, index_type: str, expected_images: int) -> IndexStore:
        """Write the new index's model, catalogue and manifest; ``embedder`` must be fitted."""
        if not self.created or self.store is not None:
            raise RuntimeError("create() is for a new index, once")
        factory, search_params = resolve_index_type(index_type, embedder.dim, expected_images)
        self.store = IndexStore.create(self.path, embedder, factory, search_params, self._lock, index_type)
        return self.store

    @property
    def catalogue(self) -> Catalogue:
        return self._open_store().catalogue

    def add(self, images: Sequence[NewImage], skipped: Sequence[SkippedFile] = (), restat: Sequence[Restat] = ()) -> None:
        """Commit embedded images with their vectors, skipped files and new stats of unchanged files, at once."""
        store = self._open_store()
        with store.catalogue.transaction():
            store.catalogue.add_images(images, store.dim)
            for file in skipped:
                store.catalogue.set_skipped(file.path, file.size, file.mtime_ns, file.reason)
            for file in restat:
                store.catalogue.update_stat(file.path, file.size, file.mtime_ns)

    def remove(self, ids: Sequence[int], skipped_paths: Sequence[str] = (), removed_paths: Sequence[str] | None = None) -> int:
        """Remove images by id and skipped-file records by path in one commit; returns images removed.

        ``removed_paths``, if given, becomes the index's list of paths taken
        out with ``cbir remove`` (see :meth:`set_removed_paths`), in the same commit.
        """
        store = self._open_store()
        with store.catalogue.transaction():
            removed = store.catalogue.remove_ids(ids)
            store.catalogue.remove_skipped(skipped_paths)
            if removed_paths is not None:
                store.set_removed_paths(removed_paths)
        return removed

    def set_removed_paths(self, paths: Sequence[str]) -> None:
        """Record the paths ``cbir remove`` took out, so indexing a folder above them leaves them out."""
        store = self._open_store()
        with store.catalogue.transaction():
            store.set_removed_paths(paths)

    def set_labels(self, labels: dict[str, str]) -> None:
        store = self._open_store()
        with store.catalogue.transaction():
            store.catalogue.set_labels(labels)

    def change_index_type(self, index_type: str) -> None:
        """Switch the FAISS index type; the snapshot at the end of the block rebuilds it from stored vectors."""
        store = self._open_store()
        if index_type == store.manifest.get("index_type") and snapshots.factory_is_buildable(store):
            return
        factory, search_params = resolve_index_type(index_type, store.dim, store.catalogue.count_images())
        snapshots.change_index_type(store, index_type, factory, search_params)

    def _open_store(self) -> IndexStore:
        if self.store is None:
            raise RuntimeError("the index is not created yet: call create() first")
        return self.store


def _learned(store: IndexStore) -> bool:
    embedder = store.embedder()
    return embedder.extractor.requires_fit or embedder.pca is not None


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create an index under {probe}: it is not a folder (choose another --index-dir)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {probe}: permission denied (choose another --index-dir)")
