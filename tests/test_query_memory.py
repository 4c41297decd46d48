"""A query process's memory does not follow the collection: an IVF snapshot's lists are mapped, not read."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cbir.store.catalogue import NewImage
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.retrieval.search import Searcher
from cbir.store.writer import open_writer

DIM = 160  # the colour extractor's length at bins 4 x 4 x 2

# Opens the index as `cbir query` does and answers a query; prints the process's
# resident memory before opening and its peak after (kB, from /proc).
OPEN_AND_QUERY = """
import json, sys
import numpy as np
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
from cbir.retrieval.search import Searcher
np.ones(1) @ np.ones(1)
before = kb("VmRSS")
# nprobe 4 of 256 lists: a search touches a few pages of the file, not all of them
with Searcher._open_path(__import__("pathlib").Path(sys.argv[1]), {"expand": None, "nprobe": 4}) as searcher:
    query = np.load(sys.argv[2])
    ids = [m.id for m in searcher.search_vectors(query, 10)[0]]
    print(json.dumps({"before_kb": before, "peak_kb": kb("VmHWM"), "ids": ids, "mapped": getattr(searcher.vectors, "mapped", False)}))
"""


def _unit_vectors(n, dim, seed=0):
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _index(path, vectors, index_type, finish=True, first=0):
    with open_writer(path) as writer:
        if writer.created:
            writer.create(Embedder(make_extractor("color", bins=[4, 4, 2])), index_type, len(vectors), dba=None)
        for start in range(0, len(vectors), 4096):
            writer.add(
                [
                    NewImage(f"/photos/{first + i}.jpg", 1, 1, f"{first + i:064x}", "a", vectors[i - first])
                    for i in range(first + start, first + min(start + 4096, len(vectors)))
                ]
            )
        if finish:
            writer.finish()


def _open_in_fresh_process(path, query_file):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", OPEN_AND_QUERY, str(path), str(query_file)], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


@pytest.mark.parametrize("index_type", ["IVF256,Flat", "IVF256,SQ8"])
def test_an_up_to_date_ivf_snapshot_is_searched_without_reading_its_lists_into_memory(tmp_path, index_type):
    vectors = _unit_vectors(120_000, DIM)  # lists of 77 MB (Flat), 19 MB (SQ8)
    _index(tmp_path / "big", vectors, index_type)
    snapshot = max((tmp_path / "big").glob("vectors-*.faiss"), key=os.path.getsize)
    np.save(tmp_path / "query.npy", vectors[7:8])
    result = _open_in_fresh_process(tmp_path / "big", tmp_path / "query.npy")
    grown = (result["peak_kb"] - result["before_kb"]) * 1024
    # Before: faiss.read_index read every list (the whole file) into the process.
    assert grown < 0.4 * os.path.getsize(snapshot), f"{grown / 2**20:.0f} MiB for a {os.path.getsize(snapshot) / 2**20:.0f} MiB snapshot"
    assert result["mapped"] and result["ids"][0] == 8  # ids start at 1


def test_a_mapped_index_answers_as_one_read_whole_and_refuses_writes(tmp_path):
    from cbir.ann.vectors import VectorIndex

    vectors = _unit_vectors(3000, DIM, seed=1)
    _index(tmp_path / "ix", vectors, "IVF16,SQ4")
    snapshot = next((tmp_path / "ix").glob("vectors-*.faiss"))
    whole = VectorIndex.read(snapshot, "IVF16,SQ4", DIM)
    assert not whole.mapped
    with Searcher._open_path(tmp_path / "ix", {"expand": None, "nprobe": 4}) as searcher:
        assert searcher.vectors.mapped
        import faiss

        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(searcher.vectors.index).invlists)
        assert lists.prefetch_nthread == 0  # FAISS's default 32 threads per search made a query 5x slower
        whole.set_search_params({"nprobe": 4})
        searcher.vectors.rerank = 0  # compare FAISS's own answers, before re-ranking
        np.testing.assert_array_equal(searcher.vectors.search(vectors[:50], 10)[1], whole.search(vectors[:50], 10)[1])
        with pytest.raises(RuntimeError, match="read-only"):  # not FAISS's abort of the whole process
            searcher.vectors.add(np.array([99_999]), vectors[:1])


def test_rows_committed_after_the_snapshot_are_still_found(tmp_path):
    vectors = _unit_vectors(3000, DIM, seed=2)
    more = _unit_vectors(20, DIM, seed=3)
    _index(tmp_path / "ix", vectors, "IVF16,Flat")
    _index(tmp_path / "ix", more, "IVF16,Flat", finish=False, first=3000)  # a run killed before its snapshot
    with Searcher._open_path(tmp_path / "ix", {"expand": None}) as searcher:
        assert not searcher.vectors.mapped  # patched in memory: a mapped index cannot take them
        _scores, ids = searcher.search_ids(more[:5], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(3001, 3006))


def test_a_training_sample_is_read_from_the_catalogue_without_a_second_copy(tmp_path):
    import tracemalloc

    from cbir.store.directory import IndexStore

    vectors = _unit_vectors(6000, DIM, seed=4)
    _index(tmp_path / "ix", vectors, "flat")
    with IndexStore.open(tmp_path / "ix") as store:
        ids = store.catalogue.all_ids()
        np.testing.assert_array_equal(ids, np.arange(1, 6001))
        chosen = ids[::2]  # sorted, no repeats: what a rebuild's training sample asks for
        tracemalloc.start()
        try:
            sample = store.catalogue.vectors_for_ids(chosen, DIM)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(sample, vectors[::2])
        assert peak < 1.5 * sample.nbytes, f"{peak / sample.nbytes:.2f}x the sample"  # before: 2x (found, then found[positions])
        np.testing.assert_array_equal(store.catalogue.vectors_for_ids([3, 1, 3], DIM), vectors[[2, 0, 2]])  # order and repeats kept
