"""Concurrent searches batched by the server: same answers as one by one, errors to the right requests, never stuck."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbir.errors import UsageError
from cbir.indexer import index_folder
from cbir.search import Searcher
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
