"""Writing the FAISS snapshot holds the collection's vectors once: storage sized once, DBA done in place."""

import tracemalloc

import faiss
import numpy as np
import pytest

from cbir.store import dba as dba_snapshots
from cbir.store.dba import dba_config
from cbir.store.catalogue import NewImage
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.ann.rerank import augment_database
from cbir.store.directory import IndexStore
from cbir.ann.vectors import VectorIndex, build_vector_index
from cbir.store.writer import open_writer
from cbir.store.snapshots import load_vectors


def _unit_vectors(n, dim, seed=0):
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _index_vectors(path, vectors, dba=2, index_type="flat", first=0):
    """Commit ``vectors`` as images (in batches, as the indexer does), then finish (the snapshot)."""
    with open_writer(path) as writer:
        if writer.created:
            writer.create(Embedder(make_extractor("color", bins=[4, 4, 2])), index_type, len(vectors), dba=dba_config(dba, 3.0))
        for start in range(0, len(vectors), 256):
            writer.add(
                [
                    NewImage(f"/photos/{first + i}.jpg", 1, 1, f"{first + i:064x}", "a", vectors[i])
                    for i in range(start, min(start + 256, len(vectors)))
                ]
            )
        writer.finish()


def _snapshot_arrays(path):
    with IndexStore.open(path) as store:
        loaded = load_vectors(store).index.index
        files = {p.name.split("-", 1)[1]: np.load(p) for p in sorted(path.glob("augmented-*.npy"))}
    return faiss.rev_swig_ptr(faiss.downcast_index(loaded.index).get_xb(), loaded.ntotal * loaded.d).reshape(loaded.ntotal, loaded.d).copy(), files


def test_a_flat_index_is_filled_into_storage_sized_once(monkeypatch):
    vectors = _unit_vectors(1000, 16)
    blocks = [(np.arange(i, i + 100), vectors[i : i + 100]) for i in range(0, 1000, 100)]
    addresses = []
    add = VectorIndex.add

    def add_and_note_where(self, ids, rows):
        add(self, ids, rows)
        addresses.append(faiss.rev_swig_ptr(faiss.downcast_index(self.index.index).get_xb(), 1).ctypes.data)

    monkeypatch.setattr(VectorIndex, "add", add_and_note_where)
    built = build_vector_index("Flat", 16, lambda: blocks, None, count=1000)
    assert len(set(addresses)) == 1  # never reallocated (and copied) while growing
    np.testing.assert_array_equal(built.index.reconstruct_n(0, 1000), vectors)


def test_snapshot_with_dba_holds_no_copy_of_the_vectors(tmp_path, monkeypatch):
    monkeypatch.setattr(dba_snapshots, "_BLOCK_BYTES", 64 << 10)
    vectors = _unit_vectors(8000, 160)  # 5 MB
    tracemalloc.start()
    try:
        _index_vectors(tmp_path / "big", vectors)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: every vector read into a list of blocks and concatenated, then the augmented copy (>= 2x).
    assert peak < 0.5 * vectors.nbytes, f"{peak / 2**20:.1f} MiB traced for {vectors.nbytes / 2**20:.1f} MiB of vectors"
    stored, _files = _snapshot_arrays(tmp_path / "big")
    np.testing.assert_allclose(stored, augment_database(vectors, 2), atol=1e-5)


@pytest.mark.parametrize("dba", [2, None])
def test_in_place_snapshot_equals_the_general_path_also_when_updated(tmp_path, monkeypatch, dba):
    vectors = _unit_vectors(600, 160, seed=1)
    more = _unit_vectors(50, 160, seed=2)
    _index_vectors(tmp_path / "in-place", vectors, dba)
    _index_vectors(tmp_path / "in-place", more, dba, first=600)  # incremental DBA
    monkeypatch.setattr(dba_snapshots, "_flat_snapshot", dba_snapshots._other_snapshot)
    _index_vectors(tmp_path / "general", vectors, dba)
    _index_vectors(tmp_path / "general", more, dba, first=600)
    in_place, in_place_files = _snapshot_arrays(tmp_path / "in-place")
    general, general_files = _snapshot_arrays(tmp_path / "general")
    np.testing.assert_array_equal(in_place, general)
    assert in_place_files.keys() == general_files.keys() and len(in_place_files) == (4 if dba else 0)
    for name, array in in_place_files.items():
        np.testing.assert_array_equal(array, general_files[name])
    if dba:
        np.testing.assert_allclose(in_place, augment_database(np.concatenate([vectors, more]), 2), atol=1e-5)
