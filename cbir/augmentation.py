"""Database-side augmentation (DBA) of a stored index.

The catalogue keeps every image's original vector: it stays the source of
truth. With DBA on (``manifest["dba"] = {"k": K, "alpha": A}``) the FAISS
snapshot holds *augmented* vectors instead (:func:`cbir.rerank.augment_database`),
and a copy of them is kept beside it as plain ``.npy`` arrays
(``augmented-N.npy`` and ``augmented-N.ids.npy``), which query expansion reads
back. Both files are written under new names and recorded in the catalogue
in one transaction with the FAISS file, so readers see one consistent
snapshot whatever happens.

Augmentation depends on every vector's neighbours, which change whenever
images come or go, so each save recomputes it in full from the catalogue:
neighbours come from a search of an index of the collection's own type (exact
for ``flat``), then the augmented index is built. Cost: one search of every
vector, about the cost of evaluating the index once (measured in
``benchmarks/rerank.py``). Readers patch a snapshot with vectors committed
after it (not yet augmented) until the writer's next save, as for any index.

:func:`save_snapshot` is the one hook :meth:`cbir.store.IndexStore.save_vectors`
calls for an index that has, or had, DBA.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import UsageError
from cbir.fileio import write_bytes_atomic
from cbir.rerank import DEFAULT_ALPHA, augment_database, check_alpha
from cbir.vectors import VectorIndex, build_vector_index

logger = logging.getLogger(__name__)

MANIFEST_KEY = "dba"
_META_FILE = "augmented_file"
_META_CONFIG = "augmented_config"


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
    from cbir.fileio import write_json_atomic
    from cbir.store import MANIFEST_FILE

    store.manifest[MANIFEST_KEY] = config
    write_json_atomic(store.path / MANIFEST_FILE, store.manifest)
    return True


def save_snapshot(store) -> None:
    """Recompute the augmented (or, DBA turned off, plain) FAISS snapshot from the catalogue if anything changed."""
    config = store.manifest.get(MANIFEST_KEY) or None
    catalogue = store.catalogue
    wanted = json.dumps(config, sort_keys=True) if config else None
    file_name, _max_id = store._vectors_state()
    if (
        store.vectors_are_current()
        and not store._rebuild
        and (catalogue.get_meta(_META_CONFIG) or None) == wanted
        and (store.path / file_name).is_file()
    ):
        return
    ids, vectors = _all_vectors(store)
    if config is not None and len(ids) > 1:
        vectors = _augment(store.factory, store.dim, ids, vectors, config)
    vector_index = build_vector_index(store.factory, store.dim, lambda: [(ids, vectors)], _sampler(vectors))
    serial = int(catalogue.get_meta("vectors_serial", "0")) + 1
    new_files = [f"vectors-{serial}.faiss"]
    vector_index.write(store.path / new_files[0])
    if config is not None:
        new_files += [f"augmented-{serial}.npy", f"augmented-{serial}.ids.npy"]
        _write_npy(store.path / new_files[1], vectors)
        _write_npy(store.path / new_files[2], ids)
    with catalogue.transaction():
        catalogue.set_meta("vectors_file", new_files[0])
        catalogue.set_meta("vectors_max_id", str(int(ids.max()) if len(ids) else 0))
        catalogue.set_meta("vectors_serial", str(serial))
        catalogue.clear_pending_removals(up_to_id=2**62)
        if config is not None:
            catalogue.set_meta(_META_FILE, new_files[1])
            catalogue.set_meta(_META_CONFIG, wanted)
        else:
            catalogue.set_meta(_META_FILE, "")  # "" = no augmented snapshot
            catalogue.set_meta(_META_CONFIG, "")
    store._rebuild = False
    for old in [*store.path.glob("vectors-*.faiss"), *store.path.glob("augmented-*.npy")]:
        if old.name not in new_files:
            old.unlink(missing_ok=True)


def _all_vectors(store) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(store.catalogue.iter_vectors(store.dim))
    if not blocks:
        return np.zeros(0, np.int64), np.zeros((0, store.dim), np.float32)
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _sampler(vectors: np.ndarray):
    def sample(n: int) -> np.ndarray:
        chosen = np.random.default_rng(0).choice(len(vectors), size=min(n, len(vectors)), replace=False)
        return vectors[np.sort(chosen)]

    return sample


def _augment(factory: str, dim: int, ids: np.ndarray, vectors: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """DBA of ``vectors`` with neighbours from an index of the collection's own type."""
    k = min(int(config["k"]), len(ids) - 1)
    raw = build_vector_index(factory, dim, lambda: [(ids, vectors)], _sampler(vectors))
    found_scores, found_ids = raw.search(vectors, k + 1)
    rows = np.searchsorted(ids, found_ids).clip(0, len(ids) - 1)
    rows = np.where(ids[rows] == found_ids, rows, -1)
    rows[rows == np.arange(len(ids))[:, None]] = -1  # a vector is not its own neighbour
    # Keep the first k real neighbours of each row, in order.
    order = np.argsort(rows < 0, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(rows, order, axis=1)
    found_scores = np.take_along_axis(found_scores, order, axis=1)
    return augment_database(vectors, k, float(config["alpha"]), neighbours=(rows, found_scores))


def _write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


class AugmentedVectors:
    """The augmented vectors of a snapshot, memory-mapped, looked up by catalogue id."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        self.ids = ids
        self.vectors = vectors

    @classmethod
    def load(cls, store) -> "AugmentedVectors | None":
        """The store's augmented vectors, or ``None`` if its snapshot is not augmented (or was replaced meanwhile)."""
        name = store.catalogue.get_meta(_META_FILE)
        if not name:
            return None
        try:
            vectors = np.load(store.path / name, mmap_mode="r", allow_pickle=False)
            ids = np.load(store.path / name.replace(".npy", ".ids.npy"), allow_pickle=False)
        except (OSError, ValueError):
            logger.info("augmented vectors %s are gone; query expansion uses the original vectors", name)
            return None
        return cls(ids, vectors)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, found)``: the augmented vector of each id, ``found`` False for ids not in the snapshot."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        found = (self.ids[rows] == ids) if len(self.ids) else np.zeros(ids.shape, bool)
        out = np.zeros((*ids.shape, self.vectors.shape[1]), np.float32)
        out[found] = self.vectors[rows[found]]
        return out, found


#: ``index_folder(dba=KEEP)``: the default for a new index, the index's own setting for an existing one.
KEEP = "keep"


def configure(store, dba, alpha: float, created: bool, n_files: int) -> None:
    """Apply ``index_folder``'s ``dba`` argument to ``store`` (see :data:`KEEP`).

    Raises
    ------
    UsageError
        If an explicit ``dba`` is not smaller than the collection.
    """
    from cbir.rerank import DEFAULT_DBA

    if dba == KEEP:
        if created:
            set_config(store, dba_config(DEFAULT_DBA, alpha))
        return
    config = dba_config(dba, alpha)
    size = max(n_files, store.catalogue.count_images())
    if config is not None and config["k"] >= size:
        raise UsageError(f"--dba {config['k']} needs more than {config['k']} images; the collection has {size}")
    set_config(store, config)
