"""Indexing, storing and searching through the library API (colour extractor)."""

import json
import os
import shutil

import numpy as np
import pytest

import cbir.compute.work as file_work
from cbir.errors import ConfigMismatchError, IndexCorruptError, IndexNotFoundError, NoImagesError, UsageError
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path
from cbir.ann.vectors import VectorIndex
from conftest import add_broken_files, coloured_image, write_image


def test_index_and_query_finds_the_image_itself_first(collection, index_dir):
    summary = index_folder(collection, "photos", index_dir)
    assert (summary.added, summary.total, summary.skipped) == (15, 15, 0)
    query = collection / "green" / "green-2.jpg"
    with Searcher.open("photos", index_dir) as searcher:
        result = searcher.query(query, k=5)
    assert result.results[0].path == str(query)
    # Default re-ranking (DBA + query expansion) moves scores slightly off 1.0.
    assert result.results[0].score == pytest.approx(1.0, abs=1e-2)
    with Searcher.open("photos", index_dir, expand=None) as searcher:
        assert searcher.query(query, k=5).results[0].path == str(query)
    assert [m.rank for m in result.results] == [1, 2, 3, 4, 5]
    assert all(os.path.basename(os.path.dirname(m.path)) == "green" for m in result.results[:5])


def test_index_directory_holds_manifest_catalogue_and_faiss_file(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    path = index_dir / "photos"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["embedder"]["extractor"] == {"name": "color", "params": {"bins": [8, 12, 3], "min_side": 128}}
    assert manifest["dim"] == 1440 and manifest["metric"] == "inner_product"
    assert {"faiss", "numpy", "opencv", "cbir"} <= set(manifest["versions"])
    assert (path / "catalogue.sqlite").is_file()
    assert len(list(path.glob("vectors-*.faiss"))) == 1


def test_broken_files_are_skipped_counted_and_recorded(collection, index_dir):
    broken = add_broken_files(collection / "broken")
    summary = index_folder(collection, "photos", index_dir)
    assert summary.added == 15 and summary.skipped == len(broken)
    with IndexStore.open(index_path("photos", index_dir)) as store:
        recorded = dict(store.catalogue.skipped())
    assert set(recorded) == {str(p) for p in broken.values()}
    assert "empty" in recorded[str(broken["empty"])]


def test_folder_of_only_broken_files_leaves_no_index(tmp_path, index_dir):
    add_broken_files(tmp_path / "junk")
    with pytest.raises(NoImagesError, match="none of the image files"):
        index_folder(tmp_path / "junk", "junk", index_dir)
    assert not (index_dir / "junk").exists()


def test_empty_and_missing_folders_are_refused(tmp_path, index_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError):
        index_folder(tmp_path / "empty", "e", index_dir)
    with pytest.raises(UsageError, match="does not exist"):
        index_folder(tmp_path / "missing", "m", index_dir)
    assert not index_dir.exists() or not any(index_dir.iterdir())


def test_update_embeds_only_new_and_changed_files(collection, index_dir, monkeypatch):
    index_folder(collection, "photos", index_dir)
    decoded = []
    real_decode = file_work.decode_file
    monkeypatch.setattr(file_work, "decode_file", lambda data, suffix, min_side=None: decoded.append(1) or real_decode(data, suffix, min_side))

    new = write_image(collection / "red" / "red-new.jpg", coloured_image((40, 40, 210), seed=999))
    changed = collection / "blue" / "blue-0.jpg"
    write_image(changed, coloured_image((200, 90, 30), seed=12345))
    touched = collection / "green" / "green-0.jpg"
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))  # new mtime, same content
    gone = collection / "green" / "green-1.jpg"
    gone.unlink()

    summary = index_folder(collection, "photos", index_dir)
    assert (summary.added, summary.updated, summary.removed) == (1, 1, 1)
    assert summary.unchanged == 13 and summary.total == 15
    assert len(decoded) == 2  # the new and the changed file only
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.query(new, k=1).results[0].path == str(new)
        assert searcher.query(changed, k=1).results[0].path == str(changed)
        paths = {m.path for m in searcher.query(touched, k=15).results}
    assert str(gone) not in paths and str(touched) in paths


def test_an_update_that_changes_nothing_leaves_the_faiss_file_alone(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    before = [(p.name, p.stat().st_mtime_ns) for p in (index_dir / "photos").glob("vectors-*.faiss")]
    assert index_folder(collection, "photos", index_dir).unchanged == 15
    assert [(p.name, p.stat().st_mtime_ns) for p in (index_dir / "photos").glob("vectors-*.faiss")] == before


def test_update_with_a_different_extractor_config_is_refused(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    other = Embedder(make_extractor("color", bins=[4, 4, 4]))
    with pytest.raises(ConfigMismatchError, match=r"bins \[8, 12, 3\] \(asked: \[4, 4, 4\]\); leave them out"):
        index_folder(collection, "photos", index_dir, embedder=other)
    same = Embedder(make_extractor("color"))
    assert index_folder(collection, "photos", index_dir, embedder=same).unchanged == 15


def test_crash_during_faiss_save_keeps_previous_index(collection, index_dir, monkeypatch):
    index_folder(collection, "photos", index_dir)
    before = sorted(p.name for p in (index_dir / "photos").iterdir())
    write_image(collection / "red" / "red-extra.jpg", coloured_image((40, 40, 210), seed=77))

    def crash(self, path):
        path.with_name("partial").write_bytes(b"half")  # a crash mid-write leaves junk at most
        raise KeyboardInterrupt

    monkeypatch.setattr(VectorIndex, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        index_folder(collection, "photos", index_dir)
    monkeypatch.undo()
    # The previous FAISS file is still in force; the catalogue committed the new row; a query sees both.
    assert [p for p in before if p.startswith("vectors-")] == sorted(p.name for p in (index_dir / "photos").glob("vectors-*"))
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.size == 16
        hit = searcher.query(collection / "red" / "red-extra.jpg", k=1).results[0]
    assert hit.path.endswith("red-extra.jpg")
    assert index_folder(collection, "photos", index_dir).unchanged == 16


def test_corrupt_manifest_is_refused(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    path = index_dir / "photos"
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="manifest.json"):
        Searcher.open("photos", index_dir)


def test_changed_model_file_is_refused(tmp_path, index_dir, collection):
    from cbir.features.pca import PCAReduction

    index_folder(collection, "pca", index_dir, embedder=Embedder(make_extractor("color"), PCAReduction(4)))
    np.savez(index_dir / "pca" / "model" / "pca.npz", mean=np.zeros(1))
    with Searcher.open("pca", index_dir) as searcher, pytest.raises(IndexCorruptError, match="changed since"):
        searcher.query(collection / "red" / "red-0.jpg", k=3)


def test_opening_an_index_hashes_no_model_file(collection, index_dir, monkeypatch):
    """``cbir list``/``info`` open the store only: model files are hashed when the embedder loads, once each."""
    import cbir.store.directory
    from cbir.features.pca import PCAReduction

    index_folder(collection, "pca", index_dir, embedder=Embedder(make_extractor("color"), PCAReduction(4)))
    hashed = []
    real = cbir.store.directory.file_sha256
    monkeypatch.setattr(cbir.store.directory, "file_sha256", lambda path: hashed.append(path) or real(path))
    with IndexStore.open(index_dir / "pca") as store:
        assert store.dim == 4 and hashed == []
        store.embedder()
        store.embedder()
    assert [p.name for p in hashed] == ["pca.npz"]


def test_unknown_index_and_k_too_large(collection, index_dir):
    with pytest.raises(IndexNotFoundError, match="no index named 'nope'"):
        Searcher.open("nope", index_dir)
    index_folder(collection, "photos", index_dir)
    with Searcher.open("photos", index_dir) as searcher:
        # More than the collection holds: all of it, said once as a warning.
        assert len(searcher.query(collection / "red" / "red-0.jpg", k=16).results) == 15
        with pytest.raises(UsageError, match="at least 1"):
            searcher.query(collection / "red" / "red-0.jpg", k=0)


def test_pca_is_applied_to_collection_and_queries(collection, index_dir):
    from cbir.features.pca import PCAReduction

    embedder = Embedder(make_extractor("color"), PCAReduction(6, whiten=True))
    index_folder(collection, "pca", index_dir, embedder=embedder, dba=None)  # plain vectors: the score must be exact
    with Searcher.open("pca", index_dir, expand=None) as searcher:
        assert searcher.store.dim == 6
        query = collection / "blue" / "blue-3.jpg"
        top = searcher.query(query, k=3).results
    assert top[0].path == str(query) and top[0].score == pytest.approx(1.0, abs=1e-4)


def test_labels_csv_is_stored_and_a_relative_move_is_independent(collection, index_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    rows = ["file,label"] + [f"photos/{p.parent.name}/{p.name},{p.parent.name.upper()}" for p in collection.rglob("*.jpg")]
    csv.write_text("\n".join(rows) + "\n")
    index_folder(collection, "photos", index_dir, labels=csv)
    with IndexStore.open(index_path("photos", index_dir)) as store:
        assert {row.label for row in store.catalogue.image_rows()} == {"RED", "GREEN", "BLUE"}


def test_index_can_be_moved_with_its_folder(collection, index_dir, tmp_path):
    index_folder(collection, "photos", index_dir)
    shutil.move(index_dir, tmp_path / "elsewhere")
    with Searcher.open("photos", tmp_path / "elsewhere") as searcher:
        assert searcher.size == 15


def test_pca_on_the_collection_embeds_each_image_once(collection, index_dir, monkeypatch):
    from cbir.features.color import ColorHistogram
    from cbir.features.pca import PCAReduction

    prepared = []
    real_prepare = ColorHistogram.prepare
    monkeypatch.setattr(ColorHistogram, "prepare", lambda self, image: prepared.append(1) or real_prepare(self, image))
    # Plain vectors (no DBA, no query expansion): in 5-d, re-ranking may put a near-identical image first.
    summary = index_folder(collection, "pca", index_dir, embedder=Embedder(make_extractor("color"), PCAReduction(5)), dba=None)
    assert summary.added == 15 and len(prepared) == 15
    with Searcher.open("pca", index_dir, expand=None) as searcher:
        query = collection / "red" / "red-4.jpg"
        assert searcher.query(query, k=1).results[0].path == str(query)


def test_pca_fitted_on_another_folder(collection, index_dir, tmp_path):
    from cbir.features.pca import PCAReduction
    from conftest import make_collection

    make_collection(tmp_path / "training", per_class=3)
    embedder = Embedder(make_extractor("color"), PCAReduction(4))
    index_folder(collection, "pca", index_dir, embedder=embedder, pca_train_folder=tmp_path / "training")
    with Searcher.open("pca", index_dir) as searcher:
        assert searcher.size == 15 and searcher.store.dim == 4


def test_two_new_copies_of_one_stored_image_both_reuse_its_vector(collection, index_dir):
    """Regression: repeated ids in Catalogue.vectors_for_ids left rows of uninitialised memory."""
    import shutil

    index_folder(collection, "photos", index_dir)
    for n in range(2):
        shutil.copy(collection / "red" / "red-0.jpg", collection / "red" / f"copy-{n}.jpg")
    summary = index_folder(collection, "photos", index_dir)
    assert summary.added == 2 and summary.reused == 2
    with IndexStore.open(index_path("photos", index_dir)) as store:
        rows = {row.path: row.id for row in store.catalogue.image_rows()}
        ids = [rows[str(collection / "red" / name)] for name in ("red-0.jpg", "copy-0.jpg", "copy-1.jpg")]
        vectors = store.catalogue.vectors_for_ids(ids, store.dim)
    assert np.array_equal(vectors[0], vectors[1]) and np.array_equal(vectors[0], vectors[2])
