"""The FAISS snapshot of an index: how it is recorded, read, repaired and rewritten.

The catalogue is the source of truth; the FAISS file is a snapshot of it,
written under a new name and recorded in the catalogue (with its own factory
string, the manifest factory it was built for, the collection size it was
tuned for and a fingerprint) in the transaction that switches to it. A reader
patches an out-of-date snapshot with what was committed since, and rebuilds
one that is missing, damaged or of another index in memory; the next write
repairs it on disk. :class:`VectorSnapshots` is the part of
:class:`cbir.store.IndexStore` that does this.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.entrypoints import ENTRY_SUFFIX
from cbir.errors import IndexCorruptError, UsageError
from cbir.fileio import sha256_bytes
from cbir.progress import SILENT, Progress
from cbir.vectors import RETUNE_GROWTH, VectorIndex, build_vector_index, retuned_index_type

logger = logging.getLogger(__name__)

_META_VECTORS_FILE = "vectors_file"
_META_VECTORS_MAX_ID = "vectors_max_id"
_META_VECTORS_SERIAL = "vectors_serial"
# What the snapshot is, recorded with it: a manifest that names another
# factory (an interrupted type change, an edited manifest) or a file that no
# longer fits these (truncated, replaced) is noticed and rebuilt.
_META_VECTORS_FACTORY = "vectors_factory"  # the snapshot's own factory ("Flat" after a training fallback)
_META_VECTORS_TARGET = "vectors_target"  # the manifest factory it was built for
_META_VECTORS_TUNED_FOR = "vectors_tuned_for"  # images in the collection when it was built from scratch
_META_VECTORS_FINGERPRINT = "vectors_fingerprint"  # size and hash of head and tail: truncation, replacement
_FINGERPRINT_SPAN = 1 << 16


@dataclass
class _Snapshot:
    """The FAISS snapshot as the catalogue records it."""

    file: str | None
    max_id: int
    factory: str | None
    target: str | None
    tuned_for: int
    fingerprint: str | None


@dataclass
class LoadedVectors:
    """A FAISS index as a reader sees it, with how many stale ids it may still return."""

    index: VectorIndex
    stale_ids: int


class VectorSnapshots:
    """The snapshot protocol, mixed into :class:`cbir.store.IndexStore` (which provides
    ``path``, ``manifest``, ``catalogue``, ``dim``, ``factory``, ``name`` and ``writable``)."""

    def _snapshot(self) -> _Snapshot:
        meta = self.catalogue.get_meta
        return _Snapshot(
            file=meta(_META_VECTORS_FILE),
            max_id=int(meta(_META_VECTORS_MAX_ID, "0")),
            # Indexes written before these were recorded: the manifest's word, checked against the file.
            factory=meta(_META_VECTORS_FACTORY, self.factory),
            target=meta(_META_VECTORS_TARGET, self.factory),
            tuned_for=int(meta(_META_VECTORS_TUNED_FOR, "0")),
            fingerprint=meta(_META_VECTORS_FINGERPRINT),
        )

    def _read_snapshot(self, state: _Snapshot) -> VectorIndex:
        """The recorded FAISS file, checked against what the catalogue says it is.

        Raises
        ------
        IndexCorruptError
            Missing, unreadable, truncated or not the index recorded (another index's file).
        """
        file = self.path / state.file
        if not file.is_file():
            raise IndexCorruptError(f"index {self.name!r}: its vector file {state.file} is missing")
        if state.fingerprint is not None and _fingerprint(file) != state.fingerprint:
            raise IndexCorruptError(f"index {self.name!r}: its vector file {state.file} is not the one written (truncated or replaced)")
        vector_index = VectorIndex.read(file, state.factory, self.dim)
        if not vector_index.matches(state.factory):
            raise IndexCorruptError(f"index {self.name!r}: its vector file {state.file} is not a {state.factory!r} index")
        return vector_index

    def load_vectors(self) -> LoadedVectors:
        """The FAISS index, patched in memory with rows committed after its last save.

        Ids removed since then may still come back from a search: drop any id
        the catalogue no longer has (``stale_ids`` says how many to allow for).
        A snapshot that is missing or unusable is rebuilt in memory from the
        catalogue, with a warning; the next write repairs the file.
        """
        problem = None
        for _attempt in range(2):
            with self.catalogue.snapshot():  # one committed state of meta and rows
                state = self._snapshot()
                if state.file is None:
                    return LoadedVectors(self._exact_reranking(self._build_vectors()), 0)
                try:
                    vector_index = self._read_snapshot(state)
                except IndexCorruptError as exc:
                    # A writer may have replaced the file between our reads: look again, once.
                    problem = exc
                    continue
                for ids, vectors in self.catalogue.iter_vectors(self.dim, min_id=state.max_id):
                    vector_index.add(ids, vectors)
                stale = int((self.catalogue.pending_removals() <= state.max_id).sum())
            return LoadedVectors(self._exact_reranking(vector_index), stale)
        logger.warning("%s; searching a copy rebuilt from the catalogue (the next cbir index run repairs the file)", problem)
        with self.catalogue.snapshot():
            return LoadedVectors(self._exact_reranking(self._build_vectors()), 0)

    def _exact_reranking(self, vector_index: VectorIndex) -> VectorIndex:
        catalogue, dim = self.catalogue, self.dim
        vector_index.exact_vectors = lambda ids: catalogue.vectors_by_id(ids, dim)
        return vector_index

    def factory_is_buildable(self) -> bool:
        """Whether FAISS can build the manifest's factory string (someone may have edited it)."""
        try:
            VectorIndex.create(self.factory, self.dim)
        except UsageError:
            return False
        return True

    def _check_factory(self) -> None:
        if not self.factory_is_buildable():
            raise IndexCorruptError(
                f"index {self.name!r}: manifest.json names index type {self.factory!r}, which FAISS cannot build; "
                f"choose one with cbir index FOLDER --name {self.name} --index-type flat|hnsw|ivf|ivfpq"
            )

    def _build_vectors(self) -> VectorIndex:
        catalogue, dim = self.catalogue, self.dim
        self._check_factory()

        def sample(n: int) -> np.ndarray:
            ids = np.array([row.id for row in catalogue.image_rows()], dtype=np.int64)
            chosen = np.sort(np.random.default_rng(0).choice(ids, size=min(n, len(ids)), replace=False))
            return catalogue.vectors_for_ids(chosen, dim)

        return build_vector_index(self.factory, dim, lambda: catalogue.iter_vectors(dim), sample, catalogue.count_images())

    def save_vectors(self, progress: Progress = SILENT) -> str | None:
        """Bring the FAISS file up to date with the catalogue (writers only).

        The file is rebuilt from the stored vectors (never re-embedded) when it
        is missing or unusable, when it is not the type the manifest names (an
        interrupted type change, an edited manifest), or when a short-named
        type's parameters were chosen for a collection :data:`RETUNE_GROWTH`
        times smaller. Returns a one-line account of such a rebuild, else None.
        ``progress`` follows DBA's neighbour search, and shows what follows it
        (writing the augmented vectors, or the FAISS file) as a status line.
        """
        if not self.writable:
            raise RuntimeError("save_vectors needs an index opened for writing")
        from cbir import augmentation

        state = self._snapshot()
        rebuilt = self._retune(state)
        state = self._snapshot()
        if augmentation.applies(self):  # DBA: the snapshot is recomputed from the catalogue
            self._check_factory()
            problem = self._snapshot_problem(state)
            augmentation.save_snapshot(self, progress)  # rebuilds whenever _rebuild says so
            self._remove_orphan_entry_files()
            if problem is not None and rebuilt is None:
                if state.target == self.factory:
                    logger.warning("index %r: %s; rebuilding it from the catalogue", self.name, problem)
                rebuilt = f"rebuilt the vector index ({problem})"
            return rebuilt
        if (
            rebuilt is None
            and state.target == self.factory
            and self.vectors_are_current()
            and state.fingerprint is not None
            and (self.path / state.file).is_file()
            and _fingerprint(self.path / state.file) == state.fingerprint
        ):
            return None  # nothing changed: do not read or rewrite a possibly large file
        progress.status("writing the vector index")
        vector_index = None
        if rebuilt is None and state.file is not None:
            if state.target != self.factory:
                rebuilt = f"rebuilt the vector index as {self.factory} (it was {state.factory})"
            else:
                try:
                    vector_index = self._read_snapshot(state)
                except IndexCorruptError as exc:
                    logger.warning("%s; rebuilding it from the catalogue", exc)
                    rebuilt = f"rebuilt the vector index from the catalogue ({exc})"
        if vector_index is not None and self.vectors_are_current() and state.fingerprint is not None:
            return None
        if vector_index is not None:
            removed = self.catalogue.pending_removals()
            removed = removed[removed <= state.max_id]
            if len(removed) and not vector_index.supports_removal:
                vector_index = None  # this FAISS type cannot delete: rebuild
            else:
                vector_index.remove(removed)
        tuned_for = state.tuned_for
        if vector_index is None:
            vector_index = self._build_vectors()
            tuned_for = self.catalogue.count_images()
        else:
            for ids, vectors in self.catalogue.iter_vectors(self.dim, min_id=state.max_id):
                vector_index.add(ids, vectors)
        serial = int(self.catalogue.get_meta(_META_VECTORS_SERIAL, "0")) + 1
        new_name = f"vectors-{serial}.faiss"
        vector_index.write(self.path / new_name)
        with self.catalogue.transaction():
            self.catalogue.set_meta(_META_VECTORS_FILE, new_name)
            self.catalogue.set_meta(_META_VECTORS_MAX_ID, str(self.catalogue.max_id()))
            self.catalogue.set_meta(_META_VECTORS_SERIAL, str(serial))
            self.record_snapshot(vector_index, new_name, tuned_for)
            self.catalogue.clear_pending_removals(up_to_id=2**62)
        for old in self.path.glob("vectors-*.faiss"):
            if old.name != new_name:
                old.unlink(missing_ok=True)
        self._remove_orphan_entry_files()
        return rebuilt

    def _remove_orphan_entry_files(self) -> None:
        """HNSW entry points (:mod:`cbir.entrypoints`) of FAISS files since removed."""
        for entry in self.path.glob("vectors-*" + ENTRY_SUFFIX):
            if not (self.path / (entry.name[: -len(ENTRY_SUFFIX)] + ".faiss")).is_file():
                entry.unlink(missing_ok=True)

    def record_snapshot(self, vector_index: VectorIndex, file_name: str, tuned_for: int | None = None) -> None:
        """Record what the snapshot ``file_name`` is, inside the transaction that switches to it."""
        if tuned_for is None:
            tuned_for = self.catalogue.count_images()
        self.catalogue.set_meta(_META_VECTORS_FACTORY, vector_index.factory)
        self.catalogue.set_meta(_META_VECTORS_TARGET, self.factory)
        self.catalogue.set_meta(_META_VECTORS_TUNED_FOR, str(tuned_for))
        self.catalogue.set_meta(_META_VECTORS_FINGERPRINT, _fingerprint(self.path / file_name))

    def _vectors_state(self) -> tuple[str | None, int]:
        state = self._snapshot()
        return state.file, state.max_id

    @property
    def _rebuild(self) -> bool:
        """Whether the snapshot must be rebuilt from the catalogue (see :meth:`_snapshot_problem`)."""
        return self._snapshot_problem(self._snapshot()) is not None

    def _snapshot_problem(self, state: _Snapshot) -> str | None:
        """Why the recorded snapshot cannot just be updated: another factory, a missing or altered file."""
        if state.file is None:
            return None
        if state.target != self.factory:
            return f"it was {state.factory}, the manifest names {self.factory}"
        file = self.path / state.file
        if not file.is_file():
            return f"its vector file {state.file} is missing"
        if state.fingerprint is not None and _fingerprint(file) != state.fingerprint:
            return f"its vector file {state.file} is not the one written (truncated or replaced)"
        return None

    @_rebuild.setter
    def _rebuild(self, value: bool) -> None:
        pass  # decided by what the catalogue records, not by memory

    def _retune(self, state: _Snapshot) -> str | None:
        """Re-choose a short-named type's parameters, or retry a failed training, once the collection has grown."""
        if state.file is None or state.target != self.factory:
            return None
        count = self.catalogue.count_images()
        retuned = retuned_index_type(self.manifest.get("index_type", ""), self.factory, self.dim, state.tuned_for, count)
        if retuned is not None:
            old = self.factory
            self.change_index_type(self.manifest["index_type"], *retuned)
            return f"rebuilt the vector index as {self.factory} (was {old}, chosen for {state.tuned_for} images; now {count})"
        if state.factory != state.target and count >= RETUNE_GROWTH * max(state.tuned_for, 1):
            # Training failed last time (too few vectors) and exact search stood in: try again.
            self.catalogue.set_meta(_META_VECTORS_TARGET, "")
            return f"rebuilt the vector index as {self.factory} (exact search stood in while {state.tuned_for} images were too few to train it)"
        return None

    def snapshot_factory(self) -> str | None:
        """The factory string of the FAISS file in force (may differ from the manifest's while a rebuild is due)."""
        return self._snapshot().factory if self._snapshot().file is not None else None

    def vectors_are_current(self) -> bool:
        """Whether the FAISS file reflects every committed change."""
        state = self._snapshot()
        return (
            state.file is not None
            and state.target == self.factory
            and self.catalogue.max_id() <= state.max_id
            and len(self.catalogue.pending_removals()) == 0
        )


def _fingerprint(file: Path) -> str:
    """Size and a hash of the first and last 64 KiB: tells a truncated or replaced file in microseconds."""
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_FINGERPRINT_SPAN)
        f.seek(max(0, size - _FINGERPRINT_SPAN))
        tail = f.read(_FINGERPRINT_SPAN)
    return f"{size}:{sha256_bytes(head + tail)[:32]}"
