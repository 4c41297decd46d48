"""Kill an indexing run at random moments, again and again; resume; the index equals a clean build.

The property behind "nothing lost, nothing corrupted when a run is
interrupted": whatever moment a SIGKILL lands (start-up, fitting, a commit,
DBA, the snapshot), the next run carries on, and the finished index holds
exactly the vectors, labels and search results of an uninterrupted build.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np

from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher

from conftest import make_collection, slowed_indexer

# Slowed a little so that kills land inside the run, not only before or after it.
INDEXER = slowed_indexer("killed", 0.1)


def _contents(name, index_dir, probe):
    with Searcher.open(name, index_dir) as searcher:
        rows = {row.path: (row.sha256, row.label) for row in searcher.image_rows()}
        vectors = {}
        for ids, block in searcher.iter_original_vectors():
            for image_id, vector in zip(ids, block):
                vectors[int(image_id)] = vector
        paths = {row.id: row.path for row in searcher.image_rows()}
        by_path = {paths[i]: v for i, v in vectors.items()}
        results = [(m.path, round(m.score, 5)) for m in searcher.query(probe, k=20).results]
    return rows, by_path, results


def test_random_kills_then_resume_equal_a_clean_build(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=40, size=(24, 32))  # 120 images, 30 slowed batches
    index_dir = tmp_path / "indexes"
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(8):
        process = subprocess.Popen([sys.executable, "-c", INDEXER, str(root), str(index_dir)])
        time.sleep(rng.uniform(0.3, 2.0))  # start-up takes about a second: some kills land before any commit
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 3, "most runs must be killed mid-way for the test to mean something"
    resumed = index_folder(root, "killed", index_dir)
    assert resumed.total == 120
    index_folder(root, "clean", index_dir)
    probe = sorted(root.rglob("*.jpg"))[5]
    rows_k, vectors_k, results_k = _contents("killed", index_dir, probe)
    rows_c, vectors_c, results_c = _contents("clean", index_dir, probe)
    assert rows_k == rows_c
    assert vectors_k.keys() == vectors_c.keys()
    for path in vectors_c:
        assert np.array_equal(vectors_k[path], vectors_c[path]), path
    assert results_k == results_c
    again = index_folder(root, "killed", index_dir)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 120)
