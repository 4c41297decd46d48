"""What the catalogue records about an index's FAISS snapshot, and the one routine that switches to a new one.

The catalogue is the source of truth; the FAISS file is a snapshot of it,
written under a new name and recorded in the catalogue (with its own factory
string, the manifest factory it was built for, the collection size it was
tuned for and a fingerprint) in the transaction that switches to it:
:func:`commit_snapshot`, used by plain and DBA snapshots alike. A crash at
any moment leaves either the old snapshot or the new one in force.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cbir.ann.hnsw_seeds import ENTRY_SUFFIX
from cbir.fileio import sha256_bytes

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
class SnapshotState:
    """The FAISS snapshot as the catalogue records it."""

    file: str | None
    max_id: int
    factory: str | None
    target: str | None
    tuned_for: int
    fingerprint: str | None
    serial: int


def read_state(store) -> SnapshotState:
    """The recorded snapshot of ``store`` (an :class:`~cbir.store.directory.IndexStore`)."""
    meta = store.catalogue.get_meta
    return SnapshotState(
        file=meta(_META_VECTORS_FILE),
        max_id=int(meta(_META_VECTORS_MAX_ID, "0")),
        # Indexes written before these were recorded: the manifest's word, checked against the file.
        factory=meta(_META_VECTORS_FACTORY, store.factory),
        target=meta(_META_VECTORS_TARGET, store.factory),
        tuned_for=int(meta(_META_VECTORS_TUNED_FOR, "0")),
        fingerprint=meta(_META_VECTORS_FINGERPRINT),
        serial=int(meta(_META_VECTORS_SERIAL, "0")),
    )


def next_file_name(store) -> tuple[int, str]:
    """``(serial, file name)`` for the next FAISS snapshot."""
    serial = read_state(store).serial + 1
    return serial, f"vectors-{serial}.faiss"


def commit_snapshot(
    store,
    vector_index,
    file_name: str,
    *,
    max_id: int,
    serial: int,
    tuned_for: int | None = None,
    extra_meta: dict[str, str] | None = None,
    keep_files: tuple[str, ...] = (),
) -> None:
    """Switch ``store`` to the FAISS file ``file_name`` (already written) in one catalogue transaction.

    ``extra_meta`` is recorded in the same transaction (DBA's augmented
    files). Afterwards, snapshot files no longer in force are deleted (those
    named in ``keep_files`` excepted).
    """
    catalogue = store.catalogue
    if tuned_for is None:
        tuned_for = catalogue.count_images()
    with catalogue.transaction():
        catalogue.set_meta(_META_VECTORS_FILE, file_name)
        catalogue.set_meta(_META_VECTORS_MAX_ID, str(max_id))
        catalogue.set_meta(_META_VECTORS_SERIAL, str(serial))
        catalogue.set_meta(_META_VECTORS_FACTORY, vector_index.factory)
        catalogue.set_meta(_META_VECTORS_TARGET, store.factory)
        catalogue.set_meta(_META_VECTORS_TUNED_FOR, str(tuned_for))
        catalogue.set_meta(_META_VECTORS_FINGERPRINT, fingerprint(store.path / file_name))
        catalogue.clear_pending_removals(up_to_id=2**62)
        for key, value in (extra_meta or {}).items():
            catalogue.set_meta(key, value)
    keep = {file_name, *keep_files}
    for old in [*store.path.glob("vectors-*.faiss"), *store.path.glob("augmented-*.npy")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)
    remove_orphan_entry_files(store.path)


def forget_target(store) -> None:
    """Record that the snapshot is not what the manifest asks for: the next save rebuilds it."""
    store.catalogue.set_meta(_META_VECTORS_TARGET, "")


def remove_orphan_entry_files(path: Path) -> None:
    """HNSW entry points (:mod:`cbir.ann.hnsw_seeds`) of FAISS files since removed."""
    for entry in path.glob("vectors-*" + ENTRY_SUFFIX):
        if not (path / (entry.name[: -len(ENTRY_SUFFIX)] + ".faiss")).is_file():
            entry.unlink(missing_ok=True)


def snapshot_problem(store, state: SnapshotState) -> str | None:
    """Why the recorded snapshot cannot just be updated: another factory, a missing or altered file."""
    if state.file is None:
        return None
    if state.target != store.factory:
        return f"it was {state.factory}, the manifest names {store.factory}"
    file = store.path / state.file
    if not file.is_file():
        return f"its vector file {state.file} is missing"
    if state.fingerprint is not None and fingerprint(file) != state.fingerprint:
        return f"its vector file {state.file} is not the one written (truncated or replaced)"
    return None


def snapshot_factory(store) -> str | None:
    """The factory string of the FAISS file in force (may differ from the manifest's while a rebuild is due)."""
    state = read_state(store)
    return state.factory if state.file is not None else None


def vectors_are_current(store) -> bool:
    """Whether the FAISS file reflects every committed change."""
    state = read_state(store)
    catalogue = store.catalogue
    return (
        state.file is not None
        and state.target == store.factory
        and catalogue.max_id() <= state.max_id
        and len(catalogue.pending_removals()) == 0
    )


def fingerprint(file: Path) -> str:
    """Size and a hash of the first and last 64 KiB: tells a truncated or replaced file in microseconds."""
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_FINGERPRINT_SPAN)
        f.seek(max(0, size - _FINGERPRINT_SPAN))
        tail = f.read(_FINGERPRINT_SPAN)
    return f"{size}:{sha256_bytes(head + tail)[:32]}"
