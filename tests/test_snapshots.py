"""The FAISS snapshot is repaired from the catalogue: damage, interrupted type changes, growth, Ctrl-C."""

import json
import os
import logging
import shutil
import threading

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

import cbir.compute.work as file_work
from cbir.store.catalogue import Catalogue
from cbir.cli import app
from cbir.retrieval.duplicates import find_duplicates
from cbir.features.base import make_extractor
from cbir.features.pca import PCAReduction
from cbir.features.pipeline import Embedder
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path
from cbir.ann.vectors import VectorIndex, resolve_index_type
from cbir.store.snapshot_record import snapshot_factory as recorded_factory
from conftest import CLASS_COLOURS, coloured_image, make_collection, write_image

runner = CliRunner()


def small_embedder():
    return Embedder(make_extractor("color", bins=[4, 4, 2]))  # 160-d: quick to train


def add_images(root, start, count, size=(24, 32)):
    for n in range(start, start + count):
        name, colour = list(CLASS_COLOURS.items())[n % 3]
        write_image(root / name / f"extra-{n}.jpg", coloured_image(colour, seed=1000 + n, size=size))


def snapshot_factory(index_dir, name):
    with IndexStore.open(index_path(name, index_dir)) as store:
        return recorded_factory(store), store.factory


def search_warnings(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("cbir")]


# -- parameters revisited as the collection grows -----------------------------------
def test_ivf_lists_are_retuned_when_the_collection_grows_without_re_embedding(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "photos"
    add_images(root, 0, 80)
    index_folder(root, "grow", index_dir, index_type="ivf", embedder=small_embedder())
    assert snapshot_factory(index_dir, "grow") == ("IVF2,Flat", "IVF2,Flat")
    add_images(root, 80, 250)  # 330 images: more than 4x, the rule now gives 8 lists
    decoded = []
    original = file_work.decode_file
    monkeypatch.setattr(file_work, "decode_file", lambda *a, **k: decoded.append(1) or original(*a, **k))
    summary = index_folder(root, "grow", index_dir)
    assert len(decoded) == 250 and summary.added == 250  # only the new files were embedded
    assert snapshot_factory(index_dir, "grow") == ("IVF8,Flat", "IVF8,Flat")
    assert "IVF8,Flat" in summary.vectors_rebuilt and "80" in summary.vectors_rebuilt
    with IndexStore.open(index_path("grow", index_dir)) as store:
        assert store.manifest["search_params"] == resolve_index_type("ivf", 160, 330)[1]


def test_a_failed_training_is_retried_once_the_collection_has_grown(tmp_path, index_dir):
    root = tmp_path / "photos"
    add_images(root, 0, 20)
    index_folder(root, "retry", index_dir, index_type="IVF64,Flat", embedder=small_embedder())
    assert snapshot_factory(index_dir, "retry") == ("Flat", "IVF64,Flat")  # 20 vectors cannot train 64 lists
    result = runner.invoke(app, ["info", "retry", "--index-dir", str(index_dir)])
    assert "vector file in force is a Flat index" in result.stdout
    add_images(root, 20, 70)
    summary = index_folder(root, "retry", index_dir)
    assert snapshot_factory(index_dir, "retry") == ("IVF64,Flat", "IVF64,Flat")
    assert summary.vectors_rebuilt and "IVF64,Flat" in summary.vectors_rebuilt


# -- interrupted or edited index types -----------------------------------------------
def test_an_interrupted_index_type_change_is_finished_by_the_next_run(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "photos"
    add_images(root, 0, 60)
    index_folder(root, "switch", index_dir, embedder=small_embedder())
    for new_type, factory in [("hnsw", "HNSW32"), ("flat", "Flat"), ("ivf", "IVF1,Flat")]:

        def killed(self, path):
            raise KeyboardInterrupt

        monkeypatch.setattr(VectorIndex, "write", killed)
        with pytest.raises(KeyboardInterrupt):
            index_folder(root, "switch", index_dir, index_type=new_type)
        monkeypatch.undo()
        before, manifest = snapshot_factory(index_dir, "switch")
        assert manifest == factory and before != factory  # the old snapshot is still in force
        with Searcher.open("switch", index_dir) as searcher:  # and readers still use it
            assert searcher.query(root / "red" / "extra-0.jpg", k=1).results[0].path.endswith("extra-0.jpg")
        summary = index_folder(root, "switch", index_dir)  # no --index-type: the manifest says what to finish
        assert snapshot_factory(index_dir, "switch") == (factory, factory)
        assert summary.vectors_rebuilt and summary.unchanged == 60 and summary.added == 0
    with Searcher.open("switch", index_dir) as searcher:
        assert isinstance(searcher.vectors.index, faiss.IndexIVF)


def test_a_manifest_edited_to_another_factory_is_rebuilt_and_a_bogus_one_refused(tmp_path, index_dir):
    root = tmp_path / "photos"
    add_images(root, 0, 30)
    index_folder(root, "edited", index_dir, embedder=small_embedder())
    manifest_file = index_dir / "edited" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "factory": "HNSW16"}))
    with Searcher.open("edited", index_dir) as searcher:  # the flat file recorded in the catalogue still serves
        assert searcher.size == 30
    index_folder(root, "edited", index_dir)
    assert snapshot_factory(index_dir, "edited") == ("HNSW16", "HNSW16")
    manifest_file.write_text(json.dumps({**manifest, "factory": "Bogus"}))
    result = runner.invoke(app, ["index", str(root), "--name", "edited", "--index-dir", str(index_dir)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Bogus" in lines[0]
    assert "--index-type" in lines[0]
    result = runner.invoke(app, ["index", str(root), "--name", "edited", "--index-dir", str(index_dir), "--index-type", "flat"])
    assert result.exit_code == 0, result.stderr
    assert snapshot_factory(index_dir, "edited") == ("Flat", "Flat")


# -- damaged FAISS files ---------------------------------------------------------------
@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "foreign"])
def test_a_damaged_faiss_file_is_rebuilt_from_the_catalogue(tmp_path, index_dir, damage, caplog):
    root = tmp_path / "photos"
    make_collection(root)
    index_folder(root, "photos", index_dir)
    faiss_file = next((index_dir / "photos").glob("vectors-*.faiss"))
    if damage == "delete":
        faiss_file.unlink()
    elif damage == "truncate":
        faiss_file.write_bytes(faiss_file.read_bytes()[:200])
    elif damage == "garbage":
        faiss_file.write_bytes(b"\0" * faiss_file.stat().st_size)
    else:  # another index's file, of another type
        other = tmp_path / "other"
        add_images(other, 0, 30)
        index_folder(other, "other", index_dir, index_type="hnsw")
        shutil.copy(next((index_dir / "other").glob("vectors-*.faiss")), faiss_file)
    query = root / "green" / "green-2.jpg"
    # A reader: one warning, and a search over every image.
    result = runner.invoke(app, ["query", str(query), "--name", "photos", "--index-dir", str(index_dir), "-k", "15"])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "searching a copy rebuilt from" in lines[0]
    assert str(query) in result.stdout.splitlines()[0] and result.stdout.count(".jpg") == 15
    # The next write repairs the file on disk, re-embedding nothing.
    summary = index_folder(root, "photos", index_dir)
    assert summary.unchanged == 15 and summary.vectors_rebuilt
    caplog.clear()
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.size == 15
        assert searcher.query(query, k=1).results[0].path == str(query)
    assert search_warnings(caplog) == []


# -- Ctrl-C on a new index -----------------------------------------------------------------
def test_ctrl_c_before_the_first_batch_keeps_a_fitted_pca_and_resumes(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root)

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Catalogue, "add_images", interrupted)
    embedder = Embedder(make_extractor("color", bins=[4, 4, 2]), PCAReduction(4))
    with pytest.raises(KeyboardInterrupt):
        index_folder(root, "pca", index_dir, embedder=embedder)
    monkeypatch.undo()
    assert (index_dir / "pca" / "model").is_dir()  # the fitted PCA is kept
    monkeypatch.setattr(PCAReduction, "fit", lambda *a: pytest.fail("the PCA was fitted again"))
    summary = index_folder(root, "pca", index_dir)
    assert summary.added == 15 and summary.total == 15


def test_ctrl_c_before_the_first_batch_of_an_index_that_learns_nothing_leaves_nothing(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root)
    monkeypatch.setattr(Catalogue, "add_images", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        index_folder(root, "plain", index_dir)
    assert not (index_dir / "plain").exists()


# -- duplicates and concurrency ----------------------------------------------------------
def test_duplicates_reads_one_snapshot_while_a_writer_commits(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root)
    index_folder(root, "dups", index_dir)
    original = Catalogue.image_rows
    state = {"done": False}

    def rows_then_a_writer_commits(self, ids=None):
        rows = original(self, ids)
        if ids is None and not state["done"]:
            state["done"] = True
            # Another process adds copies of indexed images right after the rows were read.
            for n in range(3):
                shutil.copy(root / "red" / f"red-{n}.jpg", root / "red" / f"copy-{n}.jpg")
            index_folder(root, "dups", index_dir)
        return rows

    monkeypatch.setattr(Catalogue, "image_rows", rows_then_a_writer_commits)
    groups = find_duplicates("dups", threshold=0.999, index_dir=index_dir)
    assert state["done"]
    assert not any("copy-" in path for group in groups for path in group.paths)  # the state before the writer
    monkeypatch.undo()
    groups = find_duplicates("dups", threshold=0.999, index_dir=index_dir)
    assert sum("copy-" in path for group in groups for path in group.paths) == 3


def test_concurrent_small_searches_leave_faiss_on_all_its_threads():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    index = VectorIndex.create("Flat", 32)
    index.add(np.arange(2000), vectors)
    errors, after = [], []

    def searches(batch):
        try:
            own = faiss.omp_get_max_threads()
            for _ in range(200):
                index.search(vectors[:batch], 5)
            after.append(faiss.omp_get_max_threads() == own)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    faiss.omp_set_num_threads(2)
    threads = [threading.Thread(target=searches, args=(n,)) for n in (1, 1, 2, 64)]
    for t in threads:
        t.start()
    searches(1)
    for t in threads:
        t.join()
    assert errors == [] and after == [True] * 5  # every thread keeps its own setting
    assert faiss.omp_get_max_threads() == 2
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
    fresh.start()
    fresh.join()
    assert seen[0] > 1 or os.cpu_count() == 1  # a new thread starts with the process default


# -- re-ranking ------------------------------------------------------------------------------
def test_ivfpq_scores_are_exact_after_re_ranking(tmp_path, index_dir):
    root = tmp_path / "photos"
    make_collection(root, per_class=40, size=(24, 32))
    # Plain vectors and plain search (no DBA, no query expansion): scores are cosine similarities.
    index_folder(root, "pq", index_dir, index_type="ivfpq", embedder=small_embedder(), dba=None)
    with Searcher.open("pq", index_dir, expand=None) as searcher:
        assert searcher.vectors.rerank > 0
        ids, stored = [], []
        for block_ids, block in searcher.store.catalogue.iter_vectors(searcher.store.dim):
            ids.append(block_ids)
            stored.append(block)
        ids, stored = np.concatenate(ids), np.concatenate(stored)
        query = stored[7:8]
        matches = searcher.search_vectors(query, 10)[0]
    exact = stored @ query[0]
    best = np.argsort(-exact)[:10]
    assert [m.id for m in matches] == ids[best].tolist()
    np.testing.assert_allclose([m.score for m in matches], exact[best], rtol=1e-5)


def test_re_ranking_from_many_threads_at_once(tmp_path, index_dir):
    root = tmp_path / "photos"
    make_collection(root, per_class=40, size=(24, 32))
    index_folder(root, "pq", index_dir, index_type="ivfpq", embedder=small_embedder())
    with Searcher.open("pq", index_dir) as searcher:
        queries = searcher.store.catalogue.vectors_for_ids(list(range(1, 41)), searcher.store.dim)
        expected = [[m.id for m in found] for found in searcher.search_vectors(queries, 5)]
        results, errors = {}, []

        def worker(n):
            try:
                for _ in range(10):
                    results[n] = [[m.id for m in searcher.search_vectors(q[None, :], 5)[0]] for q in queries]
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and all(found == expected for found in results.values())


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("index_type", ["bogus", "PQ7"])
def test_a_bogus_index_type_is_one_line_naming_the_choices(collection, index_dir, index_type):
    result = runner.invoke(app, ["index", str(collection), "--name", "x", "--index-dir", str(index_dir), "--index-type", index_type])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "flat, hnsw, ivf, ivfpq" in lines[0] and "factory" in lines[0]
    assert "faiss::" not in lines[0] and ".cpp" not in lines[0]
    assert not (index_dir / "x").exists()
