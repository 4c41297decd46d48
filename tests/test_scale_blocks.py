"""The scale benchmark's blockwise data: what it scores against must be what holding everything would give."""

import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _scale_data  # noqa: E402
from _scale_data import SyntheticHaystack, exact_neighbours, synthetic  # noqa: E402


def _haystack(monkeypatch, n=2500, dim=32):
    monkeypatch.setattr(_scale_data, "BLOCK", 1000)  # three blocks, the last one short
    tail = synthetic(40, dim, seed=9, clusters=3)
    return SyntheticHaystack(n, dim, clusters=20, tail=tail), tail


def test_every_pass_over_the_blocks_gives_the_same_rows_and_ids(monkeypatch):
    haystack, tail = _haystack(monkeypatch)
    first = list(haystack.blocks())
    again = list(haystack.blocks())
    assert [len(ids) for ids, _ in first] == [1000, 1000, 500, 40]
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in first]), np.arange(1, len(haystack) + 1))
    for (ids_a, rows_a), (_ids_b, rows_b) in zip(first, again):
        np.testing.assert_array_equal(rows_a, rows_b)
    assert not np.array_equal(first[0][1], first[1][1])  # each block from its own seed
    np.testing.assert_array_equal(first[-1][1], tail)  # the tail comes last


def test_a_sample_is_rows_of_the_haystack_without_repeats(monkeypatch):
    haystack, _tail = _haystack(monkeypatch)
    everything = np.concatenate([rows for _ids, rows in haystack.blocks()])
    sample = haystack.sample(300, seed=4)
    assert sample.shape == (300, 32)
    _scores, nearest = faiss.knn(sample, everything, 1, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_allclose(everything[nearest[:, 0]], sample)
    assert len(np.unique(nearest)) == 300


def test_blockwise_ground_truth_equals_exact_search_over_all_vectors(monkeypatch):
    haystack, _tail = _haystack(monkeypatch)
    everything = np.concatenate([rows for _ids, rows in haystack.blocks()])
    queries = synthetic(50, 32, seed=7, clusters=20)
    _scores, rows = faiss.knn(queries, everything, 10, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_array_equal(exact_neighbours(haystack.blocks(), queries, 10), rows + 1)
    # a block smaller than k still merges right
    tiny = [(np.arange(1, 4), everything[:3]), (np.arange(4, len(everything) + 1), everything[3:])]
    np.testing.assert_array_equal(exact_neighbours(tiny, queries, 10), rows + 1)
