"""Other modules read the catalogue through ``Searcher``'s public methods, under its catalogue lock.

A ``Searcher`` shares one SQLite connection between threads (the server's
searches); evaluation and duplicate search used to call the catalogue
directly, bypassing the lock that keeps those threads apart.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cbir.evaluation.protocols import evaluate_index
from cbir.indexing.run import index_folder
from cbir.retrieval.duplicates import find_duplicates
from cbir.retrieval.search import Searcher


class _LockChecked:
    """A catalogue that notes the name of every call made while the searcher's lock is free."""

    def __init__(self, catalogue, lock: threading.Lock, unlocked: list[str]):
        self._catalogue, self._lock, self._unlocked = catalogue, lock, unlocked

    def __getattr__(self, name):
        attribute = getattr(self._catalogue, name)
        if not callable(attribute) or name == "close":  # closing the store is not a read
            return attribute

        def checked(*args, **kwargs):
            if not self._lock.locked():
                self._unlocked.append(name)
            return attribute(*args, **kwargs)

        return checked


@pytest.fixture
def unlocked_calls(monkeypatch):
    """Catalogue calls made without the lock by whatever uses a ``Searcher`` opened from now on."""
    calls: list[str] = []
    init = Searcher.__init__

    def checked_init(self, store, *args, **kwargs):
        init(self, store, *args, **kwargs)
        store.catalogue = _LockChecked(store.catalogue, self._catalogue_lock, calls)

    monkeypatch.setattr(Searcher, "__init__", checked_init)
    return calls


@pytest.fixture
def indexed(collection, index_dir):
    index_folder(collection, "photos", index_dir, dba=2)
    return collection


def test_evaluation_reads_the_catalogue_under_the_searchers_lock(indexed, index_dir, unlocked_calls):
    report = evaluate_index("photos", index_dir)
    assert report.n_queries == 15
    assert unlocked_calls == []


def test_duplicate_search_reads_the_catalogue_under_the_searchers_lock(indexed, index_dir, unlocked_calls):
    find_duplicates("photos", 0.999, index_dir)
    assert unlocked_calls == []


def test_public_catalogue_reads_from_many_threads_agree_with_one(indexed, index_dir, unlocked_calls):
    with Searcher.open("photos", index_dir) as searcher:
        rows = searcher.image_rows()
        ids = [row.id for row in rows]
        expected = searcher.original_vectors(ids)
        failures, results = [], []

        def reader():
            try:
                for _ in range(20):
                    assert [row.id for row in searcher.image_rows(ids[::-1])] == ids[::-1]
                    results.append(np.array_equal(searcher.original_vectors(ids), expected))
                    assert sum(len(block) for block, _ in searcher.iter_original_vectors(4)) == len(ids)
                    searcher.query_id(ids[0], k=3)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == [] and all(results) and len(results) == 80
    assert unlocked_calls == []
