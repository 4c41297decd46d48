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
* the manifest: settings asked for during a run (:meth:`~IndexWriter.configure`)
  are written once, by :meth:`~IndexWriter.finish`;
* finishing, an explicit step: :meth:`~IndexWriter.finish` retunes a grown
  index, runs DBA and writes the FAISS snapshot. Leaving the block only
  releases the lock (and removes a failed creation); a run that stops
  without finishing leaves committed rows that readers patch in.

The writer takes and hands back values (rows, vectors, an embedder): the
store and catalogue it writes through stay inside it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cbir.store import snapshots
from cbir.store.catalogue import NewImage
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

    Inside the block the open index is the writer's own; it hands out
    values (rows, vectors, the embedder), never the store or catalogue.
    """

    def __init__(self, path: Path, wait: bool = False, create: bool = True, progress: Progress = SILENT):
        self.path = path
        self.progress = progress
        self.wait = wait
        self.may_create = create
        self._store: IndexStore | None = None
        self.created = False
        self._lock: WriteLock | None = None
        #: How the closing snapshot was rebuilt from the stored vectors, if it was (see cbir.store.snapshots.save_vectors).
        self.vectors_rebuilt: str | None = None
        self.finished = False
        self._manifest_changes: dict = {}

    # -- the block -------------------------------------------------------
    def __enter__(self) -> "IndexWriter":
        if not self.may_create:
            self._store = IndexStore.open(self.path, writable=True, wait=self.wait)
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
                self._store = IndexStore.open_locked(self.path, self._lock)
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
        store, self._store = self._store, None
        failed = exc_type is not None
        # A new index that failed before committing an image is not worth
        # keeping, unless it learned something (a trained model, a fitted PCA):
        # that is kept, and the next run resumes from it.
        discard = failed and self.created and (store is None or (store.catalogue.count_images() == 0 and not _learned(store)))
        try:
            if store is not None:
                store.close()
        finally:
            self._release()
            if discard:
                self._discard()
            elif not failed and self.created and self.finished:
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

    def create(
        self, embedder, index_type: str, expected_images: int, dba: dict | None = None, local_features: dict | None = None, video: dict | None = None
    ) -> None:
        """Write the new index's model, catalogue and manifest (with its DBA, local-features and video-frame
        settings); ``embedder`` must be fitted."""
        if not self.created or self._store is not None:
            raise RuntimeError("create() is for a new index, once")
        factory, search_params = resolve_index_type(index_type, embedder.dim, expected_images)
        extra = {"dba": dba, **({"local_features": local_features} if local_features else {}), **({"video": video} if video else {})}
        self._store = IndexStore.create(self.path, embedder, factory, search_params, self._lock, index_type, extra=extra)

    def configure(self, *, dba=None, index_type: str | None = None, local_features=None, video: dict | None = None) -> None:
        """Ask for a DBA setting (a config dict, or ``False`` for off), an index type and/or local
        features (a :class:`cbir.features.local.LocalFeatureConfig` dict, or ``False``: drop them);
        recorded in the manifest once, by :meth:`finish`, which also rebuilds what they change."""
        store = self._open_store()
        if video is not None and store.manifest.get("video") != video:
            self._manifest_changes["video"] = video  # applies to the videos decoded from now on
        if local_features is not None and store.manifest.get("local_features") != (local_features or None):
            self._manifest_changes["local_features"] = local_features or None
            if not local_features or store.manifest.get("local_features"):  # off, or computed another way: drop the old
                with store.catalogue.transaction():
                    store.catalogue.clear_local_features()
        if dba is not None:
            config = dba or None
            if store.manifest.get("dba") != config:
                self._manifest_changes["dba"] = config
        if index_type is not None:
            if index_type != store.manifest.get("index_type") or not snapshots.factory_is_buildable(store):
                factory, search_params = resolve_index_type(index_type, store.dim, store.catalogue.count_images())
                snapshots.check_buildable(factory, store.dim)
                self._manifest_changes.update(index_type=index_type, factory=factory, search_params=search_params)

    def record_indexed_root(self, folder: str) -> None:
        """Remember ``folder`` as one this index was built from (what a server may serve files from)."""
        store = self._open_store()
        with store.catalogue.transaction():
            store.record_indexed_root(folder)

    def finish(self) -> str | None:
        """Retune a grown index, record the run's settings (one manifest write), run DBA and write the FAISS snapshot.

        Returns a one-line account of a rebuild of the FAISS index from the
        stored vectors, if there was one. ``progress`` (given to
        :func:`open_writer`) follows DBA's neighbour search.
        """
        store = self._open_store()
        try:
            retuned, note = snapshots.plan_retune(store, self._manifest_changes)
            changes = {**self._manifest_changes, **retuned}
            if changes:
                store.update_manifest(**changes)
            self._manifest_changes = {}
            self.vectors_rebuilt = snapshots.save_vectors(store, self.progress, retuned=note)
        finally:
            self.progress.stop()
        self.finished = True
        return self.vectors_rebuilt

    # -- reading what a run decides from (values, not the store) -------------
    @property
    def dim(self) -> int:
        return self._open_store().dim

    @property
    def local_features_config(self) -> dict | None:
        """How this index computes local features (asked for in this run, else the manifest's), or ``None``."""
        if "local_features" in self._manifest_changes:
            return self._manifest_changes["local_features"]
        return self._open_store().manifest.get("local_features")

    @property
    def video_config(self) -> dict | None:
        """Which frames of a video this index takes (a :class:`cbir.images.video.FrameSampling` dict), or ``None``: the defaults."""
        if "video" in self._manifest_changes:
            return self._manifest_changes["video"]
        return self._open_store().manifest.get("video")

    def video_counts(self) -> tuple[int, int]:
        """``(videos, frames)`` in the index."""
        return self._open_store().catalogue.video_counts()

    def ids_with_local_features(self) -> set[int]:
        return self._open_store().catalogue.ids_with_local_features()

    def stored_local_features(self, ids) -> dict[int, bytes]:
        """``{id: packed local features}`` of those ``ids`` that have them."""
        return self._open_store().catalogue.local_features(ids)

    @property
    def embedder_config(self) -> dict:
        """The config the collection was embedded with (the manifest's)."""
        return self._open_store().manifest["embedder"]

    @property
    def model_dir(self) -> Path:
        """The embedder's saved state, which worker processes and Ray actors build their copy from."""
        return self._open_store().model_dir

    def embedder(self, runtime_overrides: dict | None = None):
        """The index's embedder, state loaded (see :meth:`IndexStore.embedder`)."""
        return self._open_store().embedder(runtime_overrides)

    def count_images(self) -> int:
        return self._open_store().catalogue.count_images()

    def rows_under(self, folder: str) -> dict:
        """Indexed rows at or below ``folder``, by path."""
        return self._open_store().catalogue.images_under(folder)

    def skipped_under(self, folder: str) -> dict:
        """``{path: (size, mtime_ns, reason)}`` of skipped files at or below ``folder``."""
        return self._open_store().catalogue.skipped_under(folder)

    def content_hashes(self):
        """``(id, sha256)`` of every indexed image."""
        return self._open_store().catalogue.content_hashes()

    def removed_paths(self) -> list[str]:
        return self._open_store().removed_paths()

    def rows_by_id(self, ids) -> list:
        return self._open_store().catalogue.image_rows(ids)

    def stored_vectors(self, ids):
        """The catalogue's vectors of ``ids``, in that order."""
        store = self._open_store()
        return store.catalogue.vectors_for_ids(ids, store.dim)

    def stored_metadata(self, ids) -> dict:
        """The catalogue's metadata of ``ids`` (GPS included: it is copied, never shown), by id."""
        return self._open_store().catalogue.metadata(ids, gps=True)

    def ids_without_metadata(self) -> set[int]:
        return self._open_store().catalogue.ids_without_metadata()

    def all_rows(self) -> list:
        return self._open_store().catalogue.image_rows()

    def all_skipped(self):
        return self._open_store().catalogue.skipped()

    # -- writing values ------------------------------------------------------
    def add(self, images: Sequence[NewImage], skipped: Sequence[SkippedFile] = (), restat: Sequence[Restat] = ()) -> None:
        """Commit embedded images with their vectors, skipped files and new stats of unchanged files, at once."""
        store = self._open_store()
        with store.catalogue.transaction():
            # A new index's first run meets each path once: nothing to replace.
            store.catalogue.add_images(images, store.dim, replace=not self.created)
            for file in skipped:
                store.catalogue.set_skipped(file.path, file.size, file.mtime_ns, file.reason)
            for file in restat:
                store.catalogue.update_stat(file.path, file.size, file.mtime_ns)

    def add_local_features(self, records: Sequence[tuple[int, bytes]]) -> None:
        """Commit local features of images already indexed (vectors untouched), at once."""
        store = self._open_store()
        with store.catalogue.transaction():
            store.catalogue.set_local_features(records)

    def add_metadata(self, records: Sequence[tuple[int, Any]]) -> None:
        """Commit metadata (:class:`~cbir.store.catalogue.ImageMetadata`) of images already indexed (vectors untouched), at once."""
        store = self._open_store()
        with store.catalogue.transaction():
            store.catalogue.set_metadata(records)

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

    def _open_store(self) -> IndexStore:
        if self._store is None:
            raise RuntimeError("the index is not created yet: call create() first")
        return self._store


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
