"""Database-side augmentation (DBA) of a stored index.

The catalogue keeps every image's original vector: it stays the source of
truth. With DBA on (``manifest["dba"] = {"k": K, "alpha": A}``) the FAISS
snapshot holds *augmented* vectors instead (:func:`cbir.ann.rerank.augment_database`),
and a copy of them is kept beside it as plain ``.npy`` arrays
(``augmented-N.npy`` and ``augmented-N.ids.npy``), which query expansion reads
back. Both files are written under new names and recorded in the catalogue
in one transaction with the FAISS file, so readers see one consistent
snapshot whatever happens. The augmented vectors' fingerprints are recorded
with them (:func:`augmented_problem`): a reader warns of a missing, truncated
or replaced file instead of silently searching without it, and the next save
recomputes it.

Augmentation depends on every vector's neighbours, which change whenever
images come or go, so each save brings it up to date from the catalogue,
under the index's write lock. The first time (or after ``k`` changes) in
full: neighbours from a search of an index of the collection's own type
(exact for ``flat``). After that incrementally, from the neighbour lists kept
with the snapshot (``augmented-N.neighbours.npy`` / ``.scores.npy``): new
images, and images that lost a neighbour, are searched against the
collection (exactly, or above a size approximately: :mod:`cbir.ann.approximate`);
every other image merges its old neighbours with its best among
the new images; only images whose neighbours changed are averaged again.
The result equals a recomputation in full (tested; on the exact path). Readers patch a snapshot
with vectors committed after it (not yet augmented) until the writer's next
save, as for any index.

:func:`save_snapshot` is the one hook :func:`cbir.store.snapshots.save_vectors`
calls for an index that has, or had, DBA; it switches snapshots through
:func:`cbir.store.snapshot_record.commit_snapshot` like any other.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cbir.errors import IndexCorruptError, UsageError
from cbir.fileio import atomic_path
from cbir.progress import SILENT, Progress, ProportionalBar
from cbir.ann.rerank import DEFAULT_ALPHA, augment_rows, check_alpha, merge_neighbours, search_nearest_neighbours, search_top_k
from cbir.ann.vectors import VectorIndex, build_vector_index
from cbir.store.snapshot_record import commit_snapshot, fingerprint, next_file_name, read_state, vectors_are_current

logger = logging.getLogger(__name__)

MANIFEST_KEY = "dba"
_META_FILE = "augmented_file"
_META_CONFIG = "augmented_config"
_META_FINGERPRINT = "augmented_fingerprint"  # of the vectors and ids files: truncation, replacement


def dba_config(k: int | None, alpha: float = DEFAULT_ALPHA) -> dict[str, Any] | None:
    """The manifest entry for DBA-``k`` (``None``: off); refuses ``k < 1`` and a bad ``alpha``."""
    if k is None:
        return None
    if isinstance(k, bool) or int(k) < 1:
        raise UsageError(f"--dba must be at least 1 (use --no-dba to turn it off), got {k}")
    check_alpha(alpha)
    return {"k": int(k), "alpha": float(alpha)}


def applies(store) -> bool:
    """Whether saving ``store``'s snapshot goes through :func:`save_snapshot` (DBA on now, or before)."""
    return bool(store.manifest.get(MANIFEST_KEY)) or bool(store.catalogue.get_meta(_META_CONFIG))


def set_config(store, config: dict[str, Any] | None) -> bool:
    """Record a new DBA setting in the manifest; the next save recomputes the snapshot. True if it changed."""
    if store.manifest.get(MANIFEST_KEY) == config:
        return False
    store.update_manifest(**{MANIFEST_KEY: config})
    return True


def save_snapshot(store, progress: Progress = SILENT, rebuild: bool = False) -> None:
    """Recompute the augmented (or, DBA turned off, plain) FAISS snapshot from the catalogue if anything changed.

    ``rebuild``: the snapshot in force is damaged or of another type, so it
    is recomputed even if the catalogue did not change. ``progress`` follows
    the neighbour search, the long part: every vector against every other
    the first time.
    """
    config = store.manifest.get(MANIFEST_KEY) or None
    catalogue = store.catalogue
    wanted = json.dumps(config, sort_keys=True) if config else None
    state = read_state(store)
    damaged = augmented_problem(store) if config is not None else None
    if damaged is not None:
        logger.warning("index %r: %s; recomputing them from the catalogue", store.name, damaged)
        rebuild = True
    if (
        vectors_are_current(store)
        and not rebuild
        and (catalogue.get_meta(_META_CONFIG) or None) == wanted
        and (store.path / state.file).is_file()
    ):
        return
    serial, faiss_name = next_file_name(store)
    previous = None
    if config is not None and (catalogue.get_meta(_META_CONFIG) or None) == wanted and damaged is None:
        previous = _Snapshot.load(store)
    build = _flat_snapshot if _flat_storage(VectorIndex.create(store.factory, store.dim)) else _other_snapshot
    vector_index, ids, augmented_files = build(store, config, previous, serial, progress)
    vector_index.write(store.path / faiss_name)
    # "" = no augmented snapshot
    augmented = augmented_files[0] if config is not None and augmented_files else ""
    extra = {_META_FILE: augmented, _META_CONFIG: wanted or "", _META_FINGERPRINT: _fingerprints(store.path, augmented)}
    commit_snapshot(
        store,
        vector_index,
        faiss_name,
        max_id=int(ids.max()) if len(ids) else 0,
        serial=serial,
        extra_meta=extra,
        keep_files=tuple(augmented_files),
    )


def _fingerprints(folder: Path, name: str) -> str:
    """Fingerprints of an augmented snapshot's vectors and ids files ("" for none)."""
    if not name:
        return ""
    return " ".join(fingerprint(folder / file) for file in (name, _ids_name(name)))


def _ids_name(name: str) -> str:
    return name[: -len(".npy")] + ".ids.npy"


def augmented_problem(store) -> str | None:
    """Why the recorded augmented vectors cannot be used (missing, truncated, replaced), or ``None``."""
    name = store.catalogue.get_meta(_META_FILE)
    if not name:
        return None
    for file in (name, _ids_name(name)):
        if not (store.path / file).is_file():
            return f"its augmented vectors {file} are missing"
    recorded = store.catalogue.get_meta(_META_FINGERPRINT)
    if recorded and _fingerprints(store.path, name) != recorded:
        return f"its augmented vectors {name} are not the ones written (truncated or replaced)"
    return None


def searched_without_dba(store) -> int:
    """How many images a search sees without DBA although the manifest asks for it.

    Images committed after the snapshot (a run interrupted or failed before
    its save: readers patch them in, not augmented), or every image if no
    snapshot was augmented with this setting yet.
    """
    config = store.manifest.get(MANIFEST_KEY)
    catalogue = store.catalogue
    total = catalogue.count_images()
    if not config or total < 2:
        return 0
    state = read_state(store)
    if state.file is None or (catalogue.get_meta(_META_CONFIG) or None) != json.dumps(config, sort_keys=True):
        return total
    return total - catalogue.count_ids_up_to(state.max_id)


# Memory: the collection's vectors are held once (in FAISS's own storage for
# a flat index); everything else goes in blocks of about this many bytes
# (a neighbour search block of inner products: 4 times as many; smaller ones
# made the search slower).
_BLOCK_BYTES = 1 << 20


def _flat_snapshot(store, config, previous: _Snapshot | None, serial: int, progress: Progress):
    """A flat snapshot, augmented in place: the original vectors are read into
    the index (sized once), their neighbours found, the augmented vectors
    streamed to their ``.npy`` file and then copied over the originals."""
    catalogue, dim = store.catalogue, store.dim
    def blocks():
        return catalogue.iter_vectors(dim, _block_rows(4 * dim))

    vector_index = build_vector_index(store.factory, dim, blocks, _no_training, catalogue.count_images())
    ids, vectors = _flat_storage(vector_index)
    if config is None or len(ids) < 2:
        return vector_index, ids, []
    names = _augment(store, ids, vectors, config, previous, serial, progress)
    for start, block in _npy_blocks(store.path / names[0]):
        vectors[start : start + len(block)] = block
    return vector_index, ids, names


def _other_snapshot(store, config, previous: _Snapshot | None, serial: int, progress: Progress):
    """Any other index type: built from the augmented ``.npy`` file (or the originals) after augmenting."""
    ids, vectors = _all_vectors(store)
    names: list[str] = []
    if config is not None and len(ids) > 1:
        names = _augment(store, ids, vectors, config, previous, serial, progress)
        del vectors
        path = store.path / names[0]
        progress.status(f"building the {store.factory} index")
        return build_vector_index(store.factory, store.dim, lambda: _id_blocks(path, ids), _file_sampler(path), len(ids)), ids, names
    return build_vector_index(store.factory, store.dim, lambda: [(ids, vectors)], _sampler(vectors), len(ids)), ids, names


def _augment(store, ids, vectors, config, previous: _Snapshot | None, serial: int, progress: Progress) -> list[str]:
    """Write the augmented snapshot files for ``vectors`` (the originals, by sorted ``ids``); return their names."""
    k = min(int(config["k"]), len(ids) - 1)
    rows, scores, changed = _neighbour_lists(store.factory, store.dim, ids, vectors, k, previous, progress)
    progress.status("writing the augmented vectors")
    names = [f"augmented-{serial}{suffix}.npy" for suffix in _Snapshot.SUFFIXES]
    blocks = _augmented_blocks(ids, vectors, rows, scores, changed, float(config["alpha"]), previous)
    _write_npy_blocks(store.path / names[0], vectors.shape, np.float32, blocks)
    for name, array in zip(names[1:], (ids, _ids_of(ids, rows), scores)):
        _write_npy_blocks(store.path / name, array.shape, array.dtype, [array])
    return names


def _all_vectors(store) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector, read into one array sized once (no list of blocks to concatenate)."""
    catalogue, dim = store.catalogue, store.dim
    ids = np.empty(catalogue.count_images(), np.int64)
    vectors = np.empty((len(ids), dim), np.float32)
    filled = 0
    for block_ids, block in catalogue.iter_vectors(dim, _block_rows(4 * dim)):
        if filled + len(block_ids) > len(ids):  # more rows than counted: cannot happen under the write lock, but be safe
            ids, vectors = np.resize(ids, filled + len(block_ids)), np.resize(vectors, (filled + len(block_ids), dim))
        ids[filled : filled + len(block_ids)], vectors[filled : filled + len(block_ids)] = block_ids, block
        filled += len(block_ids)
    return ids[:filled], vectors[:filled]


def _no_training(n: int) -> np.ndarray:
    raise RuntimeError("a flat index needs no training")


def _flat_storage(vector_index: VectorIndex) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ids, vectors)`` of an ``IDMap`` flat index, ``vectors`` a writable view of FAISS's own
    storage (valid while the index lives); ``None`` for any other type."""
    index = vector_index.index
    if not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return None
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexFlat):
        return None
    ids = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    if inner.ntotal == 0:
        return ids, np.zeros((0, inner.d), np.float32)
    return ids, faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)


def _block_rows(row_bytes: int) -> int:
    return max(1, _BLOCK_BYTES // max(1, row_bytes))


def _tile() -> int:
    """Side of a square tile of float32 inner products of :data:`_BLOCK_BYTES`."""
    return max(16, math.isqrt(_BLOCK_BYTES // 4))


def _sampler(vectors: np.ndarray):
    def sample(n: int) -> np.ndarray:
        chosen = np.random.default_rng(0).choice(len(vectors), size=min(n, len(vectors)), replace=False)
        return vectors[np.sort(chosen)]

    return sample


def _file_sampler(path: Path):
    def sample(n: int) -> np.ndarray:
        return np.array(_sampler(np.load(path, mmap_mode="r", allow_pickle=False))(n))

    return sample


def _write_npy_blocks(path: Path, shape: tuple[int, ...], dtype, blocks) -> None:
    """An ``.npy`` file (as :func:`numpy.save` writes it) from row blocks, written atomically."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.writelines(np.ascontiguousarray(block, dtype=dtype).data for block in blocks)


def _npy_blocks(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` blocks of a 2-d float32 ``.npy`` file, read without mapping the whole file."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        step = _block_rows(4 * shape[1])
        for start in range(0, shape[0], step):
            block = np.empty((min(step, shape[0] - start), shape[1]), np.float32)
            if f.readinto(block.data) != block.nbytes or dtype != np.float32:
                raise IndexCorruptError(f"{path} is shorter than its header says")
            yield start, block


def _id_blocks(path: Path, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start, block in _npy_blocks(path):
        yield ids[start : start + len(block)], block


class _Snapshot:
    """Augmented vectors with the neighbour lists they came from, by catalogue id (sorted)."""

    SUFFIXES = ("", ".ids", ".neighbours", ".scores")

    def __init__(self, ids, vectors, neighbour_ids, neighbour_scores):
        self.ids, self.vectors = ids, vectors
        self.neighbour_ids, self.neighbour_scores = neighbour_ids, neighbour_scores

    @classmethod
    def load(cls, store) -> "_Snapshot | None":
        name = store.catalogue.get_meta(_META_FILE)
        if not name:
            return None
        stem = name[: -len(".npy")]
        try:
            # The vectors mapped, not read: only the rows kept are copied out.
            arrays = [
                np.load(store.path / f"{stem}{suffix}.npy", allow_pickle=False, mmap_mode="r" if not suffix else None)
                for suffix in cls.SUFFIXES
            ]
        except (OSError, ValueError):
            return None  # older or damaged: recompute in full
        vectors, ids, neighbour_ids, neighbour_scores = arrays
        return cls(ids, vectors, neighbour_ids, neighbour_scores)


def _neighbour_lists(
    factory: str, dim: int, ids: np.ndarray, vectors: np.ndarray, k: int, previous: _Snapshot | None, progress: Progress = SILENT
):
    """Every vector's top ``k`` other rows and their scores, and which vectors must be averaged again.

    In full: neighbours from an index of the collection's own type (exact for
    ``flat``; approximate above a size, :mod:`cbir.ann.approximate`). Incrementally
    (``previous`` has the same k): new images and images that lost a
    neighbour are searched against everything (by the same rule); every other image
    merges its old neighbours with its best among the new images; only
    images whose neighbours changed are averaged again.
    """
    if previous is None or previous.neighbour_ids.shape[1] != k or len(previous.ids) == 0:
        rows, scores = _neighbours_in_full(factory, dim, ids, vectors, k, progress)
        return rows, scores, np.ones(len(ids), dtype=bool)
    kept = np.isin(previous.ids, ids)
    new_rows_of_kept = np.searchsorted(ids, previous.ids[kept])
    old_lists = previous.neighbour_ids[kept]
    rows = np.full((len(ids), k), -1, dtype=np.int64)
    scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    present = np.isin(old_lists, ids)
    rows[new_rows_of_kept] = np.where(present, np.searchsorted(ids, old_lists).clip(0, len(ids) - 1), -1)
    scores[new_rows_of_kept] = previous.neighbour_scores[kept]
    redo = np.ones(len(ids), dtype=bool)
    redo[new_rows_of_kept] = ~(present & (old_lists >= 0)).all(axis=1)  # lost a neighbour, or had too few
    added = np.flatnonzero(~np.isin(ids, previous.ids))
    before = rows.copy()
    merge = np.flatnonzero(~redo)
    again = np.flatnonzero(redo)
    work = [len(merge) * len(added), len(again) * len(ids)]
    if sum(work):
        bar = ProportionalBar(progress, f"DBA neighbours ({len(added):,} new)" if len(added) else "DBA neighbours", len(ids), work)
    if len(added) and len(merge):
        found, found_scores = search_top_k(vectors[merge], vectors[added], k, tile=_tile(), report=bar.part(0))
        found = np.where(found >= 0, added[found.clip(0)], -1)
        rows[merge], scores[merge] = merge_neighbours(rows[merge], scores[merge], found, found_scores, k)
    if len(again):
        rows[again], scores[again] = search_top_k(vectors[again], vectors, k, own_rows=again, tile=_tile(), report=bar.part(1))
    changed = redo | (rows != before).any(axis=1)
    logger.info("DBA: %d of %d vectors averaged again", int(changed.sum()), len(ids))
    return rows, scores, changed


def _augmented_blocks(ids, vectors, rows, scores, changed, alpha: float, previous: _Snapshot | None) -> Iterator[np.ndarray]:
    """The augmented vectors in row blocks: averaged again where ``changed``, else the previous snapshot's."""
    step = _block_rows(4 * vectors.shape[1] * (rows.shape[1] + 2))
    for start in range(0, len(ids), step):
        stop = min(start + step, len(ids))
        block = np.empty((stop - start, vectors.shape[1]), np.float32)
        mine = changed[start:stop]
        if not mine.all():
            block[~mine] = previous.vectors[np.searchsorted(previous.ids, ids[start:stop][~mine])]
        which = start + np.flatnonzero(mine)
        if len(which):
            block[mine] = augment_rows(vectors, which, rows[which], scores[which], alpha)
        yield block


def _ids_of(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, ids[rows.clip(0)], -1)


def _neighbours_in_full(factory: str, dim: int, ids: np.ndarray, vectors: np.ndarray, k: int, progress: Progress = SILENT):
    """Every vector's top ``k`` other rows, from an index of the collection's own type.

    Flat: exact, in tiles (no second copy of the vectors, and
    neither FAISS's fixed 16 MB block of inner products), or above
    :data:`cbir.ann.approximate.APPROXIMATE_FROM` vectors IVF over a PCA
    projection re-scored exactly; followed on a bar; other types: one search of a new index, shown as a status.
    """
    if _flat_storage(VectorIndex.create(factory, dim)) is not None:
        bar = ProportionalBar(progress, "DBA neighbours", len(ids), [1])
        return search_nearest_neighbours(vectors, k, tile=_tile(), report=bar.part(0))
    progress.status(f"DBA neighbours of {len(ids):,} images")
    raw = build_vector_index(factory, dim, lambda: [(ids, vectors)], _sampler(vectors), len(ids))
    found_scores, found_ids = raw.search(vectors, k + 1)
    rows = np.searchsorted(ids, found_ids).clip(0, len(ids) - 1)
    rows = np.where(ids[rows] == found_ids, rows, -1)
    rows[rows == np.arange(len(ids))[:, None]] = -1  # a vector is not its own neighbour
    order = np.argsort(rows < 0, axis=1, kind="stable")[:, :k]  # the first k real neighbours, in order
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.where(rows >= 0, np.take_along_axis(found_scores, order, axis=1), -np.inf).astype(np.float32)
    return rows, scores


class AugmentedVectors:
    """The augmented vectors of a snapshot, memory-mapped, looked up by catalogue id.

    ``ids`` sorted; row ``rows[i]`` of ``vectors`` (row ``i`` without ``rows``) is that of ``ids[i]``.
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None = None):
        self.ids = ids
        self.vectors = vectors
        self.rows = rows

    def sorted_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)``, row ``i`` the vector of ``ids[i]`` (what an index is built from)."""
        return self.ids, (self.vectors if self.rows is None else self.vectors[self.rows])

    @classmethod
    def load(cls, store, vector_index: VectorIndex | None = None) -> "AugmentedVectors | None":
        """The store's augmented vectors, or ``None`` if its snapshot is not augmented.

        Where the side file is missing, damaged (its fingerprint differs) or
        unreadable, a warning names it and says how to restore it (``cbir
        index`` again); meanwhile a flat ``vector_index`` (the snapshot as
        loaded) gives the augmented vectors exactly, and any other type leaves
        query expansion and re-ranking on the original vectors, which the
        warning says too.
        """
        problem = None
        for _attempt in range(2):  # a writer may replace the snapshot between our reads: look again, once
            with store.catalogue.snapshot():
                name = store.catalogue.get_meta(_META_FILE)
                if not name:
                    return None
                problem = augmented_problem(store)
                if problem is None:
                    try:
                        vectors = np.load(store.path / name, mmap_mode="r", allow_pickle=False)
                        ids = np.load(store.path / _ids_name(name), mmap_mode="r", allow_pickle=False)  # 80 MB at 10M: map it too
                        if vectors.ndim == 2 and ids.shape == (len(vectors),):
                            return cls(ids, vectors)
                        problem = f"its augmented vectors {name} do not match their ids"
                    except (OSError, ValueError) as exc:
                        problem = f"its augmented vectors {name} are unreadable ({exc})"
        return cls._from_snapshot(store, problem, vector_index)

    @classmethod
    def _from_snapshot(cls, store, problem: str, vector_index: VectorIndex | None) -> "AugmentedVectors | None":
        repair = f"run `cbir index` on the folder of index {store.name!r} again to restore them"
        storage = _flat_storage(vector_index) if vector_index is not None else None
        if storage is None:
            logger.warning(
                "index %r: %s: query expansion and re-ranking use the original vectors, so results differ "
                "from what the index was built for; %s",
                store.name, problem, repair,
            )
            return None
        logger.warning(
            "index %r: %s: reading the augmented vectors from the FAISS snapshot instead; %s", store.name, problem, repair
        )
        ids, vectors = storage
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], vectors, order)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, found)``: the augmented vector of each id, ``found`` False for ids not in the snapshot."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        found = (self.ids[rows] == ids) if len(self.ids) else np.zeros(ids.shape, bool)
        out = np.zeros((*ids.shape, self.vectors.shape[1]), np.float32)
        hits = rows[found] if self.rows is None else self.rows[rows[found]]
        out[found] = self.vectors[hits]
        return out, found
