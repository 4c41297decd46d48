"""Concurrent searches batched by the server: same answers as one by one, errors to the right requests, never stuck."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cbir.errors import UsageError
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.server.batching import SearchBatcher


@pytest.fixture
def searcher(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    with Searcher.open("photos", index_dir) as opened:
        yield opened


def test_query_prepared_on_a_fresh_searcher_loads_the_model_without_deadlock(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    image = sorted(collection.rglob("*.jpg"))[0]
    with Searcher.open("photos", index_dir) as fresh, Searcher.open("photos", index_dir) as reference:
        outcome = {}
        # The model loads lazily under the model lock: the batched path must not take it twice.
        worker = threading.Thread(target=lambda: outcome.update(result=fresh.query_prepared([fresh.prepare(image)], 3)), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "query_prepared deadlocked"
        assert outcome["result"][0].results == reference.query(image, 3).results


class _GatedSearcher:
    """A Searcher whose first batch waits until ``expected`` other requests are queued behind it."""

    def __init__(self, searcher: Searcher, batcher: SearchBatcher, expected: int):
        self.inner, self.batcher, self.expected = searcher, batcher, expected
        self.embedder = searcher.embedder
        self.batches: list[list[str]] = []
        self.searching = threading.Event()

    def query_prepared(self, items, k, names):
        self.searching.set()
        if not self.batches:
            while len(self.batcher._queue) < self.expected:
                threading.Event().wait(0.005)
        self.batches.append(list(names))
        if "bad" in names:
            raise UsageError("this group fails")
        return self.inner.query_prepared(items, k, names)


def test_requests_arriving_during_a_search_run_as_one_batch_with_the_same_answers(searcher, collection):
    images = sorted(collection.rglob("*.jpg"))[:6]
    batcher = SearchBatcher()
    gated = _GatedSearcher(searcher, batcher, expected=5)
    prepared = {path.name: searcher.prepare(path) for path in images}
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.query, gated, prepared[images[0].name], 4, images[0].name)
        assert gated.searching.wait(30)
        rest = [pool.submit(batcher.query, gated, prepared[p.name], 4, p.name) for p in images[1:]]
        results = [first.result(30)] + [f.result(30) for f in rest]
    assert [len(batch) for batch in gated.batches] == [1, 5]  # the five that queued went together
    for path, result in zip(images, results):
        assert result.query == path.name
        assert result.results == searcher.query(path, 4).results


def test_a_failing_batch_fails_its_requests_only_and_the_next_ones_still_run(searcher, collection):
    images = sorted(collection.rglob("*.jpg"))[:4]
    batcher = SearchBatcher()
    gated = _GatedSearcher(searcher, batcher, expected=3)
    item = searcher.prepare(images[0])
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.query, gated, item, 3, "first")
        assert gated.searching.wait(30)
        bad = pool.submit(batcher.query, gated, item, 3, "bad")
        good_other_k = pool.submit(batcher.query, gated, item, 2, "other-k")
        good = pool.submit(batcher.query, gated, item, 3, "good")
        assert len(first.result(30).results) == 3
        with pytest.raises(UsageError, match="this group fails"):
            bad.result(30)
        # "good" shares k=3 with "bad": one group, one failure; a different k is its own group.
        with pytest.raises(UsageError):
            good.result(30)
        assert len(good_other_k.result(30).results) == 2
    assert batcher.query(gated, item, 3, "after").results == searcher.query(images[0], 3).results
    assert not batcher._leader and not batcher._queue


class _NetworkSearcher:
    """Stands in for a Searcher whose model uses every core; records when its model runs."""

    def __init__(self):
        self.embedder = type("E", (), {"extractor": type("X", (), {"transform_uses_every_core": True})()})()
        self.model_running = threading.Event()

    def query_prepared(self, items, k, names):
        self.model_running.set()
        threading.Event().wait(0.02)
        self.model_running.clear()
        return [f"{name}:{k}" for name in names]


def test_decoding_never_runs_beside_a_network_that_uses_every_core():
    searcher, batcher = _NetworkSearcher(), SearchBatcher()
    overlaps, results = [], []

    def request(n: int) -> None:
        for _ in range(5):
            with batcher.preparing(searcher):
                for _ in range(4):  # "decoding": the model must not start meanwhile
                    overlaps.append(searcher.model_running.is_set())
                    threading.Event().wait(0.002)
            results.append(batcher.query(searcher, n, 3, f"r{n}"))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(request, range(6)))
    assert len(results) == 30 and set(results) == {f"r{n}:3" for n in range(6)}
    assert len(overlaps) == 120 and not any(overlaps)


def test_a_colour_index_decodes_beside_searches(searcher):
    batcher = SearchBatcher()
    with batcher.preparing(searcher):
        # Not gated: a search may run while this thread decodes.
        done = []
        worker = threading.Thread(target=lambda: done.append(batcher.query(searcher, searcher.prepare(np.zeros((8, 8, 3), np.uint8)), 1, "x")))
        worker.start()
        worker.join(30)
        assert done and len(done[0].results) == 1
