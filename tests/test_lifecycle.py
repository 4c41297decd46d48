"""An index over time: removal, kills mid-run, one writer at a time, index types, duplicates."""

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import cv2
import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

import cbir.compute.work as file_work
from cbir.cli import app
from cbir.retrieval.duplicates import find_duplicates
from cbir.errors import IndexLockedError, UsageError
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.indexing.run import index_folder, remove_paths
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore, WriteLock
from cbir.store.locations import index_path
from cbir.ann.vectors import VectorIndex
from cbir.store.snapshots import load_vectors
from cbir.store.snapshot_record import vectors_are_current
from conftest import make_collection, slowed_indexer, write_image

runner = CliRunner()


def paths_found(searcher, query, k=None):
    return {m.path for m in searcher.query(query, k=k or searcher.size).results}


# -- removal ----------------------------------------------------------------------
def test_remove_a_file_and_a_folder(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    one = collection / "red" / "red-0.jpg"
    assert remove_paths([one], "photos", index_dir).files == 1
    assert remove_paths([collection / "blue"], "photos", index_dir).files == 5
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.size == 9
        found = paths_found(searcher, collection / "red" / "red-1.jpg")
    assert str(one) not in found and not any("/blue/" in p for p in found)


def test_removing_a_path_not_in_the_index_removes_nothing(collection, index_dir, tmp_path):
    index_folder(collection, "photos", index_dir)
    with pytest.raises(UsageError, match="not in index 'photos'"):
        remove_paths([collection / "red" / "red-0.jpg", tmp_path / "ghost.jpg"], "photos", index_dir)
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.size == 15
    result = runner.invoke(app, ["remove", str(tmp_path / "ghost.jpg"), "--name", "photos", "--index-dir", str(index_dir)])
    assert result.exit_code != 0 and result.stderr.startswith("error: not in index")


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf", "ivfpq", "IVF4,Flat", "HNSW16"])
def test_every_index_type_searches_and_removes(tmp_path, index_dir, index_type):
    root = tmp_path / "photos"
    make_collection(root, per_class=40, size=(24, 32))
    small = Embedder(make_extractor("color", bins=[4, 4, 2]))  # 160-d keeps PQ training quick
    summary = index_folder(root, "many", index_dir, index_type=index_type, embedder=small)
    assert summary.total == 120
    query = root / "green" / "green-7.jpg"
    with Searcher.open("many", index_dir, nprobe=4, ef_search=64) as searcher:
        top = searcher.query(query, k=5).results
    if index_type == "ivfpq":  # compressed codes: the image itself is near the top, not always first
        assert str(query) in {m.path for m in top}
    else:
        assert top[0].path == str(query)
    assert remove_paths([query], "many", index_dir).files == 1
    with Searcher.open("many", index_dir) as searcher:
        assert searcher.size == 119
        assert str(query) not in {m.path for m in searcher.query(root / "green" / "green-8.jpg", k=20).results}
        assert vectors_are_current(searcher.store)


def test_changing_the_index_type_rebuilds_without_re_embedding(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root, per_class=30, size=(24, 32))
    index_folder(root, "many", index_dir)
    decoded = []
    monkeypatch.setattr(file_work, "decode_file", lambda *a, **k: decoded.append(a))
    summary = index_folder(root, "many", index_dir, index_type="hnsw")
    assert decoded == [] and summary.unchanged == 90
    with IndexStore.open(index_path("many", index_dir)) as store:
        assert store.manifest["index_type"] == "hnsw" and "HNSW" in store.factory
        loaded = load_vectors(store)  # keep it alive: the downcast view does not own the index
        assert isinstance(faiss.downcast_index(loaded.index.index.index), faiss.IndexHNSW)


# -- interruption -----------------------------------------------------------------
SLOW_INDEXER = slowed_indexer("big", 0.05)


def committed_rows(catalogue_path):
    try:
        with sqlite3.connect(catalogue_path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_mid_run_keeps_committed_work_and_rerun_completes(tmp_path, index_dir):
    root = tmp_path / "photos"
    make_collection(root, per_class=60, size=(24, 32))  # 180 images, 45 slow batches
    process = subprocess.Popen([sys.executable, "-c", SLOW_INDEXER, str(root), str(index_dir)])
    catalogue = index_dir / "big" / "catalogue.sqlite"
    deadline = time.monotonic() + 60
    while committed_rows(catalogue) < 40 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = committed_rows(catalogue)
    assert 40 <= committed < 180, "the run must be killed in the middle"

    # Loadable as it is: a query sees exactly the committed images.
    with Searcher.open("big", index_dir) as searcher:
        assert searcher.size == committed
        first = sorted(root.rglob("*.jpg"))[0]

    summary = index_folder(root, "big", index_dir)
    assert summary.unchanged + summary.added == 180
    assert summary.unchanged >= committed - 1 and summary.total == 180
    with Searcher.open("big", index_dir) as searcher:
        assert searcher.size == searcher.vectors.ntotal == 180
        found = [m.path for m in searcher.query(first, k=180).results]
    assert len(found) == len(set(found)) == 180


def test_removal_committed_but_not_saved_is_invisible_to_queries(collection, index_dir, monkeypatch):
    index_folder(collection, "photos", index_dir)
    gone = collection / "red" / "red-2.jpg"
    gone.unlink()
    monkeypatch.setattr(VectorIndex, "write", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        index_folder(collection, "photos", index_dir)
    monkeypatch.undo()
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.size == 14
        found = paths_found(searcher, collection / "red" / "red-1.jpg", k=14)
    assert str(gone) not in found and len(found) == 14


# -- one writer at a time ---------------------------------------------------------
def test_second_writer_fails_clearly_or_waits(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    lock = WriteLock(index_dir / "photos")
    try:
        with pytest.raises(IndexLockedError, match="being written"):
            index_folder(collection, "photos", index_dir)
        result = runner.invoke(app, ["index", str(collection), "--name", "photos", "--index-dir", str(index_dir)])
        assert result.exit_code != 0 and "is being written by cbir process" in result.stderr
        with Searcher.open("photos", index_dir) as searcher:  # readers are never blocked
            assert searcher.size == 15
        threading.Timer(0.5, lock.release).start()
        started = time.monotonic()
        assert index_folder(collection, "photos", index_dir, wait=True).unchanged == 15
        assert time.monotonic() - started >= 0.4
    finally:
        lock.release()


def test_update_with_other_extractor_options_is_refused_by_the_cli(collection, index_dir):
    runner.invoke(app, ["index", str(collection), "--name", "photos", "--index-dir", str(index_dir)])
    result = runner.invoke(app, ["index", str(collection), "--name", "photos", "--index-dir", str(index_dir), "--bins", "4,4,4"])
    assert result.exit_code != 0
    assert result.stderr.startswith("error: index 'photos' was built with other options: bins [8, 12, 3] (asked: [4, 4, 4])")


# -- near-duplicates ----------------------------------------------------------------
def patchwork(seed: int) -> np.ndarray:
    """An image of random colour blocks: unlike every other patchwork."""
    blocks = np.random.default_rng(seed).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return cv2.resize(blocks, (64, 48), interpolation=cv2.INTER_NEAREST)


def test_duplicates_groups_copies_and_near_copies(tmp_path, index_dir):
    root = tmp_path / "photos"
    originals = [write_image(root / f"p{n}.png", patchwork(n)) for n in range(8)]
    source = originals[3]
    copy = root / "copies" / "exact.png"
    copy.parent.mkdir()
    copy.write_bytes(source.read_bytes())
    near = write_image(root / "copies" / "near.png", cv2.resize(patchwork(3), (60, 45), interpolation=cv2.INTER_AREA))
    index_folder(root, "dups", index_dir)

    found = find_duplicates("dups", 0.9, index_dir)
    # The byte-identical copy is its own tier; the near group holds each content once.
    assert [set(g.paths) for g in found.exact] == [{str(source), str(copy)}]
    assert len(found.near) == 1 and len(found.near[0].paths) == 2 and str(near) in found.near[0].paths
    assert 0.9 <= found.near[0].min_score <= 1.0
    strict = find_duplicates("dups", 0.99999, index_dir)
    assert strict.near == [] and strict.exact[0].paths == sorted([str(source), str(copy)])

    data = json.loads(
        runner.invoke(app, ["duplicates", "--name", "dups", "--index-dir", str(index_dir), "--threshold", "0.9", "--json"]).stdout
    )
    assert [g["size"] for g in data["exact"]] == [2] and [g["size"] for g in data["near"]] == [2]
    assert data["threshold"] == 0.9 and data["threshold_source"] == "given"
    result = runner.invoke(app, ["duplicates", "--name", "dups", "--index-dir", str(index_dir), "--threshold", "1.5"])
    assert result.exit_code != 0 and "outside the range" in result.stderr


def test_duplicates_work_without_range_search(tmp_path, index_dir):
    root = tmp_path / "photos"
    for n in range(6):
        write_image(root / f"p{n}.png", patchwork(n))
    (root / "again.png").write_bytes((root / "p1.png").read_bytes())
    write_image(root / "near.png", cv2.resize(patchwork(1), (60, 45), interpolation=cv2.INTER_AREA))
    index_folder(root, "dups", index_dir, index_type="hnsw")  # HNSW has no range search
    groups = find_duplicates("dups", 0.9, index_dir).near
    assert [len(g.paths) for g in groups] == [2]


def _range_search_failing(monkeypatch, index_dir, message):
    with Searcher.open("dups", index_dir) as searcher:
        index_class = type(searcher.vectors.index)

    def failing(self, *args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(index_class, "range_search", failing)


def test_duplicates_fall_back_to_neighbours_only_without_range_search_and_say_so(tmp_path, index_dir, monkeypatch, caplog):
    root = tmp_path / "photos"
    for n in range(4):
        write_image(root / f"p{n}.png", patchwork(n))
    write_image(root / "near.png", cv2.resize(patchwork(1), (60, 45), interpolation=cv2.INTER_AREA))
    index_folder(root, "dups", index_dir, dba=None)
    _range_search_failing(monkeypatch, index_dir, "Error in virtual void faiss::Index::range_search: range search not implemented")
    with caplog.at_level(logging.WARNING, logger="cbir"):
        groups = find_duplicates("dups", 0.9, index_dir).near
    assert [len(g.paths) for g in groups] == [2]
    assert [r.message.count("nearest neighbours only") for r in caplog.records] == [1]


def test_other_faiss_errors_in_duplicates_are_errors_not_a_quiet_neighbour_cap(tmp_path, index_dir, monkeypatch):
    """Any RuntimeError used to become a 32-neighbour search, changing the groups without a word."""
    root = tmp_path / "photos"
    for n in range(4):
        write_image(root / f"p{n}.png", patchwork(n))
    index_folder(root, "dups", index_dir, dba=None)
    _range_search_failing(monkeypatch, index_dir, "Error in faiss::RangeSearchResult: std::bad_alloc")
    with pytest.raises(RuntimeError, match="bad_alloc"):
        find_duplicates("dups", 0.9, index_dir)
