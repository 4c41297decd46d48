"""HNSW entry points (cbir.ann.hnsw_seeds): a group of vectors unlike the rest stays reachable."""

import logging
import shutil

import faiss
import numpy as np
import pytest

import cbir.ann.vectors as vectors_module
from cbir.ann.hnsw_seeds import entry_file, merge_results
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.indexing.run import index_folder
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path
from cbir.ann.vectors import VectorIndex
from cbir.store.snapshots import load_vectors
from conftest import CLASS_COLOURS, coloured_image, write_image

DIM = 64


def haystack_and_group(n=20_000, group=50, seed=0):
    """Unit vectors clustered in one 16-d subspace, then a small group clustered in an orthogonal one."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    common, other = basis[:, :16].T, basis[:, 16:32].T
    centres, group_centres = rng.standard_normal((50, 16)), rng.standard_normal((5, 16))
    hay = (centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, 16))) @ common
    new = (group_centres[rng.integers(0, 5, group)] + 0.5 * rng.standard_normal((group, 16))) @ other
    x = np.concatenate([hay, new]) + 0.05 * rng.standard_normal((n + group, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_as_cbir_does(x, n, entry_points=True):
    """The haystack in blocks, then the group in an add of its own (a new kind of photo)."""
    index = VectorIndex.create("HNSW32", DIM)
    if not entry_points:
        index.entry_points = None
    ids = np.arange(1, len(x) + 1)
    for start in range(0, n, 8192):
        index.add(ids[start : min(n, start + 8192)], x[start : min(n, start + 8192)])
    index.add(ids[n:], x[n:])
    index.set_search_params({"ef_search": 128})
    return index


def group_recall(index, x, group):
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    _scores, truth = flat.search(x[-group:], 11)
    _scores, found = index.search(x[-group:], 11)
    return float(np.mean([len(set(f[1:]) & set(t[1:] + 1)) / 10 for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def group_case():
    x = haystack_and_group()
    return x, build_as_cbir_does(x, 20_000)


def test_hnsw_reaches_a_group_added_later_unlike_the_rest(group_case):
    x, index = group_case
    plain = build_as_cbir_does(x, 20_000, entry_points=False)
    assert group_recall(plain, x, 50) < 0.6  # the case is hard: HNSW alone misses most of the group
    assert group_recall(index, x, 50) >= 0.95
    queries = x[:200]  # and the rest is found as well as before
    _s, ours = index.search(queries, 10)
    _s, theirs = plain.search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours, theirs)]) >= 0.98


def test_entry_points_are_saved_beside_the_file_without_pickle_and_read_back(group_case, tmp_path):
    x, index = group_case
    path = tmp_path / "vectors-1.faiss"
    index.write(path)
    with np.load(entry_file(path), allow_pickle=False) as arrays:
        assert len(arrays["leaders"]) == len(index.entry_points.leaders)
    back = VectorIndex.read(path, "HNSW32", DIM)
    back.set_search_params({"ef_search": 128})
    assert back.entry_points is not None
    assert group_recall(back, x, 50) >= 0.95
    np.testing.assert_array_equal(back.search(x[-50:], 10)[1], index.search(x[-50:], 10)[1])


def test_entry_points_of_another_index_are_ignored_with_a_warning(group_case, tmp_path, caplog):
    x, index = group_case
    index.write(tmp_path / "vectors-1.faiss")
    other = VectorIndex.create("HNSW32", DIM)
    other.add(np.arange(1, 101), x[:100])
    other.write(tmp_path / "vectors-2.faiss")
    shutil.copy(entry_file(tmp_path / "vectors-1.faiss"), entry_file(tmp_path / "vectors-2.faiss"))
    with caplog.at_level(logging.WARNING, logger="cbir"):
        back = VectorIndex.read(tmp_path / "vectors-2.faiss", "HNSW32", DIM)
    assert back.entry_points is None and "do not belong" in caplog.text
    assert back.search(x[:1], 5)[1][0, 0] == 1


def test_a_file_written_without_entry_points_searches_as_plain_hnsw(tmp_path):
    x = haystack_and_group(n=500, group=10)
    index = VectorIndex.create("HNSW32", DIM)
    index.entry_points = None
    index.add(np.arange(1, len(x) + 1), x)
    index.write(tmp_path / "vectors-1.faiss")
    assert not entry_file(tmp_path / "vectors-1.faiss").exists()
    back = VectorIndex.read(tmp_path / "vectors-1.faiss", "HNSW32", DIM)
    assert back.entry_points is None and back.search(x[3:4], 1)[1][0, 0] == 4


def test_merge_keeps_the_best_k_distinct_ids():
    scores, ids = merge_results(
        np.array([[0.9, 0.5, -np.inf]], np.float32),
        np.array([[1, 2, -1]]),
        np.array([[0.9, 0.7, 0.1]], np.float32),
        np.array([[1, 3, 4]]),
        3,
    )
    assert ids.tolist() == [[1, 3, 2]]
    np.testing.assert_allclose(scores, [[0.9, 0.7, 0.5]])
    _scores, ids = merge_results(np.full((1, 2), -np.inf, np.float32), np.full((1, 2), -1), np.array([[0.3, -np.inf]], np.float32), np.array([[5, -1]]), 2)
    assert ids.tolist() == [[5, -1]]


def test_snapshots_keep_one_entry_file_for_the_file_in_force(tmp_path, index_dir):
    root = tmp_path / "photos"
    for n in range(30):
        name, colour = list(CLASS_COLOURS.items())[n % 3]
        write_image(root / name / f"{n}.jpg", coloured_image(colour, seed=n, size=(24, 32)))
    embedder = Embedder(make_extractor("color", bins=[4, 4, 2]))
    index_folder(root, "graph", index_dir, index_type="hnsw", embedder=embedder)
    write_image(root / "extra.jpg", coloured_image((10, 200, 30), seed=99, size=(24, 32)))
    index_folder(root, "graph", index_dir)
    folder = index_path("graph", index_dir)
    with IndexStore.open(folder) as store:
        in_force = folder / store.catalogue.get_meta("vectors_file")
        loaded = load_vectors(store).index
    assert [p.name for p in folder.glob("*.entry.npz")] == [entry_file(in_force).name]
    assert loaded.entry_points is not None and loaded.ntotal == 31


def test_the_short_name_hnsw_gets_entry_points():
    assert VectorIndex.create("HNSW32", DIM).entry_points is not None
    assert VectorIndex.create(vectors_module.HNSW_FACTORY, DIM).entry_points is not None
    assert VectorIndex.create("IVF4,Flat", DIM).entry_points is None
