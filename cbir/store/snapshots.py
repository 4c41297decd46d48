"""The FAISS snapshot of an index: read (patched with what was committed since), repaired, rewritten.

What the catalogue records about a snapshot, and the transaction that
switches to a new one, are :mod:`cbir.store.snapshot_record`. Here: a reader
patches an out-of-date snapshot with what was committed since, and rebuilds
one that is missing, damaged or of another index in memory; a writer's
:func:`save_vectors` repairs it on disk, retunes a grown index, and hands
indexes with DBA to :mod:`cbir.store.dba`. Every function takes the open
:class:`~cbir.store.directory.IndexStore`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cbir.ann.vectors import RETUNE_GROWTH, VectorIndex, build_vector_index, retuned_index_type
from cbir.errors import IndexCorruptError, UsageError
from cbir.progress import SILENT, Progress
from cbir.store import dba
from cbir.store.snapshot_record import (
    SnapshotState,
    commit_snapshot,
    fingerprint,
    next_file_name,
    read_state,
    snapshot_problem,
    vectors_are_current,
)

logger = logging.getLogger(__name__)


@dataclass
class LoadedVectors:
    """A FAISS index as a reader sees it, with how many stale ids it may still return."""

    index: VectorIndex
    stale_ids: int


def read_snapshot_file(store, state: SnapshotState, mmap: bool = False) -> VectorIndex:
    """The recorded FAISS file, checked against what the catalogue says it is
    (``mmap``: IVF lists memory-mapped, read-only; see :meth:`VectorIndex.read`).

    Raises
    ------
    IndexCorruptError
        Missing, unreadable, truncated or not the index recorded (another index's file).
    """
    file = store.path / state.file
    if not file.is_file():
        raise IndexCorruptError(f"index {store.name!r}: its vector file {state.file} is missing")
    if state.fingerprint is not None and fingerprint(file) != state.fingerprint:
        raise IndexCorruptError(f"index {store.name!r}: its vector file {state.file} is not the one written (truncated or replaced)")
    vector_index = VectorIndex.read(file, state.factory, store.dim, mmap=mmap)
    if not vector_index.matches(state.factory):
        raise IndexCorruptError(f"index {store.name!r}: its vector file {state.file} is not a {state.factory!r} index")
    return vector_index


def load_vectors(store) -> LoadedVectors:
    """The FAISS index, patched in memory with rows committed after its last save.

    Ids removed since then may still come back from a search: drop any id
    the catalogue no longer has (``stale_ids`` says how many to allow for).
    A snapshot that is missing or unusable is rebuilt in memory from the
    catalogue, with a warning; the next write repairs the file.
    """
    problem = None
    catalogue = store.catalogue
    for _attempt in range(2):
        with catalogue.snapshot():  # one committed state of meta and rows
            state = read_state(store)
            if state.file is None:
                return LoadedVectors(_exact_reranking(store, build_vectors(store)), 0)
            try:
                # Up to date (nothing to patch in): map an IVF file's lists instead of reading
                # them, so a reader's memory does not follow the collection (1.4 GB at 10M x 256-d).
                vector_index = read_snapshot_file(store, state, mmap=catalogue.max_id() <= state.max_id)
            except IndexCorruptError as exc:
                # A writer may have replaced the file between our reads: look again, once.
                problem = exc
                continue
            for ids, vectors in catalogue.iter_vectors(store.dim, min_id=state.max_id):
                vector_index.add(ids, vectors)
            stale = int((catalogue.pending_removals() <= state.max_id).sum())
        return LoadedVectors(_exact_reranking(store, vector_index), stale)
    with catalogue.snapshot():
        return LoadedVectors(_exact_reranking(store, _rebuilt_for_readers(store, problem)), len(catalogue.pending_removals()))


def _rebuilt_for_readers(store, problem) -> VectorIndex:
    """A reader's copy of a snapshot it cannot read: from the augmented vectors where DBA made it
    (so results stay those of the index), else from the catalogue's vectors."""
    repair = "the next cbir index run repairs the file"
    augmented = dba.AugmentedVectors.load(store) if dba.applies(store) else None
    if augmented is None:
        extra = "; without its DBA, so results differ from the index's own" if dba.applies(store) else ""
        logger.warning("%s; searching a copy rebuilt from the catalogue%s (%s)", problem, extra, repair)
        return build_vectors(store)
    logger.warning("%s; searching a copy rebuilt from its augmented vectors (%s)", problem, repair)
    check_factory(store)
    ids, vectors = augmented.sorted_arrays()
    newest = int(ids.max()) if len(ids) else 0
    rows_after = list(store.catalogue.iter_vectors(store.dim, min_id=newest))

    def blocks():
        yield ids, vectors
        yield from rows_after

    def sample(n: int) -> np.ndarray:
        chosen = np.sort(np.random.default_rng(0).choice(len(ids), size=min(n, len(ids)), replace=False))
        return np.asarray(vectors[chosen], dtype=np.float32)

    return build_vector_index(store.factory, store.dim, blocks, sample, len(ids) + sum(len(b) for b, _ in rows_after))


def _exact_reranking(store, vector_index: VectorIndex) -> VectorIndex:
    catalogue, dim = store.catalogue, store.dim
    vector_index.exact_vectors = lambda ids: catalogue.vectors_by_id(ids, dim)
    return vector_index


def factory_is_buildable(store) -> bool:
    """Whether FAISS can build the manifest's factory string (someone may have edited it)."""
    try:
        VectorIndex.create(store.factory, store.dim)
    except UsageError:
        return False
    return True


def check_factory(store) -> None:
    if not factory_is_buildable(store):
        raise IndexCorruptError(
            f"index {store.name!r}: manifest.json names index type {store.factory!r}, which FAISS cannot build; "
            f"choose one with cbir index FOLDER --name {store.name} --index-type flat|hnsw|ivf|ivfpq"
        )


def build_vectors(store) -> VectorIndex:
    """A FAISS index of the manifest's type, built from every stored vector."""
    catalogue, dim = store.catalogue, store.dim
    check_factory(store)

    def sample(n: int) -> np.ndarray:
        ids = catalogue.all_ids()  # ids only: full rows of 10M images would take gigabytes
        chosen = np.sort(np.random.default_rng(0).choice(ids, size=min(n, len(ids)), replace=False))
        return catalogue.vectors_for_ids(chosen, dim)

    return build_vector_index(store.factory, dim, lambda: catalogue.iter_vectors(dim), sample, catalogue.count_images())


def save_vectors(store, progress: Progress = SILENT, retuned: str | None = None) -> str | None:
    """Bring the FAISS file up to date with the catalogue (writers only).

    The file is rebuilt from the stored vectors (never re-embedded) when it
    is missing or unusable, when it is not the type the manifest names (an
    interrupted type change, an edited manifest), or when a short-named
    type's parameters were chosen for a collection :data:`RETUNE_GROWTH`
    times smaller. Returns a one-line account of such a rebuild, else None.
    ``progress`` follows DBA's neighbour search, and shows what follows it
    (writing the augmented vectors, or the FAISS file) as a status line.
    ``retuned`` is :func:`plan_retune`'s account, when it asked for a rebuild.
    """
    if not store.writable:
        raise RuntimeError("save_vectors needs an index opened for writing")
    rebuilt = retuned
    state = read_state(store)
    if dba.applies(store):  # DBA: the snapshot is recomputed from the catalogue
        check_factory(store)
        problem = snapshot_problem(store, state)
        dba.save_snapshot(store, progress, rebuild=problem is not None or rebuilt is not None)
        if problem is not None and rebuilt is None:
            if state.target == store.factory:
                logger.warning("index %r: %s; rebuilding it from the catalogue", store.name, problem)
            rebuilt = f"rebuilt the vector index ({problem})"
        return rebuilt
    if (
        rebuilt is None
        and state.target == store.factory
        and vectors_are_current(store)
        and state.fingerprint is not None
        and (store.path / state.file).is_file()
        and fingerprint(store.path / state.file) == state.fingerprint
    ):
        return None  # nothing changed: do not read or rewrite a possibly large file
    progress.status("writing the vector index")
    vector_index = None
    if rebuilt is None and state.file is not None:
        if state.target != store.factory:
            rebuilt = f"rebuilt the vector index as {store.factory} (it was {state.factory})"
        else:
            try:
                vector_index = read_snapshot_file(store, state)
            except IndexCorruptError as exc:
                logger.warning("%s; rebuilding it from the catalogue", exc)
                rebuilt = f"rebuilt the vector index from the catalogue ({exc})"
    if vector_index is not None and vectors_are_current(store) and state.fingerprint is not None:
        return None
    catalogue = store.catalogue
    if vector_index is not None:
        removed = catalogue.pending_removals()
        removed = removed[removed <= state.max_id]
        if len(removed) and not vector_index.supports_removal:
            vector_index = None  # this FAISS type cannot delete: rebuild
        else:
            vector_index.remove(removed)
    tuned_for = state.tuned_for
    if vector_index is None:
        vector_index = build_vectors(store)
        tuned_for = catalogue.count_images()
    else:
        for ids, vectors in catalogue.iter_vectors(store.dim, min_id=state.max_id):
            vector_index.add(ids, vectors)
    serial, new_name = next_file_name(store)
    vector_index.write(store.path / new_name)
    commit_snapshot(store, vector_index, new_name, max_id=catalogue.max_id(), serial=serial, tuned_for=tuned_for)
    return rebuilt


def plan_retune(store, pending: dict) -> tuple[dict, str | None]:
    """What a grown collection calls for: manifest changes (new parameters of a short-named
    type) and the account of the rebuild, or ``({}, None)``.

    Nothing is decided while ``pending`` already changes the index type (that
    rebuild chooses parameters for the collection as it is now).
    """
    state = read_state(store)
    if "factory" in pending or state.file is None or state.target != store.factory:
        return {}, None
    count = store.catalogue.count_images()
    retuned = retuned_index_type(store.manifest.get("index_type", ""), store.factory, store.dim, state.tuned_for, count)
    if retuned is not None:
        factory, search_params = retuned
        check_buildable(factory, store.dim)
        note = f"rebuilt the vector index as {factory} (was {store.factory}, chosen for {state.tuned_for} images; now {count})"
        return {"factory": factory, "search_params": search_params}, note
    if state.factory != state.target and count >= RETUNE_GROWTH * max(state.tuned_for, 1):
        # Training failed last time (too few vectors) and exact search stood in: try again.
        return {}, f"rebuilt the vector index as {store.factory} (exact search stood in while {state.tuned_for} images were too few to train it)"
    return {}, None


def check_buildable(factory: str, dim: int) -> None:
    """Refuse a factory FAISS cannot build before it is recorded: the manifest must always name one it can."""
    VectorIndex.create(factory, dim)
