"""Re-ranking: αQE and DBA as pure functions, and DBA kept with a stored index under add/remove."""

import logging
import shutil

import numpy as np
import pytest

from cbir.errors import UsageError
from cbir.indexing.run import index_folder, remove_paths
from cbir.progress import Progress
from cbir.ann.rerank import augment_database, expand_queries, nearest_neighbours, neighbour_weights, top_k
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_expand_queries_is_the_weighted_mean_by_hand():
    q = _unit([[1, 0, 0]])
    neighbours = _unit([[0, 1, 0], [0, 0, 1]])[None]
    scores = np.array([[0.5, 0.25]])
    # alpha 1: q + 0.5 n1 + 0.25 n2, normalised
    expected = _unit([[1, 0.5, 0.25]])
    np.testing.assert_allclose(expand_queries(q, neighbours, scores, alpha=1), expected, rtol=1e-6)
    # alpha 0: plain mean; a missing neighbour weighs nothing
    np.testing.assert_allclose(
        expand_queries(q, neighbours, scores, alpha=0, valid=np.array([[True, False]])), _unit([[1, 1, 0]]), rtol=1e-6
    )


def test_negative_similarities_weigh_nothing():
    np.testing.assert_allclose(neighbour_weights(np.array([-0.5, 0.5]), 3), [0.0, 0.125])


def test_nearest_neighbours_excludes_self_and_matches_brute_force():
    rng = np.random.default_rng(0)
    vectors = _unit(rng.normal(size=(50, 8)))
    rows, scores = nearest_neighbours(vectors, 3, tile=7)
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :3])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :3], rtol=1e-5)


@pytest.mark.parametrize("tile", [3, 7, 64])
def test_top_k_in_tiles_matches_brute_force_and_pads_when_short(tile):
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng.normal(size=(30, 6))), _unit(rng.normal(size=(11, 6)))
    own = np.array([4, -1, 29, 0, 7, 8, -1, 15, 16, 3, 21])  # some queries are rows of vectors, across tiles
    rows, scores = top_k(queries, vectors, 5, own_rows=own, tile=tile)
    full = queries @ vectors.T
    full[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    # fewer vectors than k: padded with -1 / -inf
    rows, scores = top_k(queries[:2], vectors[:3], 5, own_rows=np.array([0, -1]), tile=tile)
    assert (rows[0, 2:] == -1).all() and (rows[1, 3:] == -1).all() and np.isneginf(scores[0, 2:]).all()
    assert sorted(rows[1, :3]) == [0, 1, 2] and 0 not in rows[0]


def test_augment_database_by_hand_and_limits():
    vectors = _unit([[1, 0], [0.8, 0.6], [0, 1]])
    out = augment_database(vectors, 1, alpha=0)
    # row 0's nearest other row is row 1: plain mean of the two
    np.testing.assert_allclose(out[0], _unit([vectors[0] + vectors[1]])[0], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(UsageError, match="needs more than 3 images"):
        augment_database(vectors, 3)
    with pytest.raises(UsageError, match="at least 1"):
        augment_database(vectors, 0)


def test_two_clusters_come_closer_together_after_dba():
    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(2, 16)))
    vectors = _unit(np.repeat(centres, 10, axis=0) + 0.6 * rng.normal(size=(20, 16)))
    labels = np.repeat([0, 1], 10)
    within = lambda v: np.mean([(v[labels == c] @ v[labels == c].T).mean() for c in (0, 1)])  # noqa: E731
    assert within(augment_database(vectors, 3)) > within(vectors)


def _state(index_dir, name):
    with IndexStore.open(index_path(name, index_dir)) as store:
        return store.manifest.get("dba"), sorted(p.name for p in store.path.glob("augmented-*.npy"))


def _augmented_matches_catalogue(index_dir, name, k):
    """The stored augmented vectors equal a fresh DBA of the catalogue's original vectors."""
    with Searcher.open(name, index_dir) as searcher:
        store = searcher.store
        ids = np.array([row.id for row in store.catalogue.image_rows()])
        original = store.catalogue.vectors_for_ids(ids.tolist(), store.dim)
        stored = searcher.stored_vectors(ids)
        assert searcher.vectors.ntotal == len(ids)
    np.testing.assert_allclose(stored, augment_database(original, k), atol=1e-5)


def test_dba_is_on_by_default_and_kept_consistent_under_add_and_remove(collection, index_dir, tmp_path):
    index_folder(collection, "photos", index_dir)
    assert _state(index_dir, "photos") == ({"k": 2, "alpha": 3.0}, [f"augmented-1{s}.npy" for s in (".ids", ".neighbours", "", ".scores")])
    _augmented_matches_catalogue(index_dir, "photos", 2)
    # add: a new class folder; remove: one file
    extra = tmp_path / "photos" / "more"
    shutil.copytree(collection / "red", extra)
    index_folder(collection, "photos", index_dir)
    _augmented_matches_catalogue(index_dir, "photos", 2)
    remove_paths([collection / "green" / "green-0.jpg"], "photos", index_dir)
    _augmented_matches_catalogue(index_dir, "photos", 2)
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.size == 19
        # the original vectors are untouched: the catalogue is still the source of truth
        row = searcher.store.catalogue.row_for_path(str(collection / "blue" / "blue-1.jpg"))
        assert not np.allclose(searcher.stored_vectors(np.array([row.id]))[0], searcher.store.catalogue.vectors_for_ids([row.id], searcher.store.dim)[0])


def test_dba_setting_changes_without_reembedding_and_turns_off(collection, index_dir):
    index_folder(collection, "photos", index_dir, dba=None)
    assert _state(index_dir, "photos") == (None, [])
    summary = index_folder(collection, "photos", index_dir, dba=4)
    assert summary.added == 0 and summary.unchanged == 15
    assert _state(index_dir, "photos")[0] == {"k": 4, "alpha": 3.0}
    _augmented_matches_catalogue(index_dir, "photos", 4)
    index_folder(collection, "photos", index_dir, dba=None)
    assert _state(index_dir, "photos") == (None, [])
    with Searcher.open("photos", index_dir, expand=None) as searcher:
        query = collection / "red" / "red-1.jpg"
        assert searcher.query(query, k=1).results[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf", "ivfpq"])
def test_dba_and_expansion_work_with_every_index_type(collection, index_dir, index_type):
    index_folder(collection, "photos", index_dir, index_type=index_type, dba=2)
    with Searcher.open("photos", index_dir, expand=3) as searcher:
        query = collection / "blue" / "blue-2.jpg"
        results = searcher.query(query, k=5).results
    assert results[0].path == str(query)
    assert all("/blue/" in m.path for m in results[:3])


def test_dba_larger_than_the_collection_is_refused_before_any_work(collection, index_dir):
    with pytest.raises(UsageError, match="--dba 15 needs more than 15 images"):
        index_folder(collection, "photos", index_dir, dba=15)
    assert not (index_dir / "photos").exists()


def test_expansion_with_a_query_excluded_uses_other_images(collection, index_dir):
    index_folder(collection, "photos", index_dir, dba=None)
    with Searcher.open("photos", index_dir, expand=1, alpha=0) as searcher:
        row = searcher.store.catalogue.row_for_path(str(collection / "red" / "red-0.jpg"))
        vector = searcher.store.catalogue.vectors_for_ids([row.id], searcher.store.dim)
        with_self = searcher.expand_queries(vector)
        without = searcher.expand_queries(vector, exclude_ids=np.array([row.id]))
    np.testing.assert_allclose(with_self, vector, atol=1e-5)  # its own top-1 is itself: the mean changes nothing
    assert not np.allclose(without, vector, atol=1e-3)
    with pytest.raises(UsageError, match="--expand must be at least 1"):
        Searcher.open("photos", index_dir, expand=0)


def test_a_small_change_averages_only_the_vectors_it_touches(collection, index_dir, tmp_path, caplog):
    index_folder(collection, "photos", index_dir)
    newcomer = collection / "red" / "red-new.jpg"
    shutil.copy(collection / "blue" / "blue-0.jpg", newcomer)
    with caplog.at_level("INFO", logger="cbir.store.dba"):
        index_folder(collection, "photos", index_dir)
    counts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DBA:")]
    averaged, total = (int(w) for w in counts[-1].split()[1:4:2])
    assert total == 16 and 1 <= averaged < 16
    _augmented_matches_catalogue(index_dir, "photos", 2)
    newcomer.unlink()
    caplog.clear()
    with caplog.at_level("INFO", logger="cbir.store.dba"):
        index_folder(collection, "photos", index_dir)
    averaged = int([r.getMessage() for r in caplog.records if r.getMessage().startswith("DBA:")][-1].split()[1])
    assert averaged < 15
    _augmented_matches_catalogue(index_dir, "photos", 2)


def test_neighbour_searches_report_the_fraction_done_tile_by_tile():
    vectors = _unit(np.random.default_rng(2).normal(size=(50, 8)))
    seen = []
    nearest_neighbours(vectors, 3, tile=7, report=seen.append)
    assert len(seen) == 8 * 9 // 2  # the tiles on and above the diagonal of 8 x 8
    assert seen == sorted(seen) and seen[-1] == 1.0
    seen.clear()
    top_k(vectors[:10], vectors, 3, tile=7, report=seen.append)
    assert len(seen) == 2 * 8 and seen == sorted(seen) and seen[-1] == 1.0


class _Recorder(Progress):
    def __init__(self):
        self.events = []

    def start(self, description, total, unit="images"):
        self.events.append(["start", description, total, 0])

    def advance(self, steps=1):
        if self.events and self.events[-1][0] == "start":
            self.events[-1][3] += steps

    def status(self, message):
        self.events.append(["status", message])

    def stop(self):
        self.events.append(["stop"])

    def phase(self, prefix):
        return [e for e in self.events if e[0] == "start" and e[1].startswith(prefix)]


def test_indexing_shows_dba_neighbour_search_on_its_progress_bar(collection, index_dir, monkeypatch):
    # A collection of 100,000 spends minutes here after the last file: the bar must not sit at 100% meanwhile.
    monkeypatch.setattr("cbir.store.dba._tile", lambda: 4)  # several tiles for 15 images
    first = _Recorder()
    index_folder(collection, "photos", index_dir, progress=first)
    [dba] = first.phase("DBA")
    assert dba[2] == 15 and dba[3] == 15  # every image counted once the search is done
    assert first.events.index(dba) > first.events.index(first.phase("indexing")[0])
    assert first.events[-1] == ["stop"]  # nothing left drawing after the run
    shutil.copy(collection / "blue" / "blue-0.jpg", collection / "red" / "red-new.jpg")
    update = _Recorder()
    index_folder(collection, "photos", index_dir, progress=update)
    [dba] = update.phase("DBA")
    assert "(1 new)" in dba[1] and dba[2] == 16 and dba[3] == 16
    _augmented_matches_catalogue(index_dir, "photos", 2)
    removal = _Recorder()
    remove_paths([collection / "red" / "red-new.jpg"], "photos", index_dir, progress=removal)
    [dba] = removal.phase("DBA")  # the images that lost a neighbour are searched again
    assert dba[2] == 15 and dba[3] == 15 and removal.events[-1] == ["stop"]
    _augmented_matches_catalogue(index_dir, "photos", 2)


@pytest.mark.parametrize("index_type, exact", [("flat", True), ("hnsw", False)])
def test_a_missing_augmented_file_is_a_warning_naming_it_and_the_repair(collection, index_dir, caplog, index_type, exact):
    """It used to be an INFO line, and re-ranking quietly used the original vectors."""
    index_folder(collection, "photos", index_dir, index_type=index_type, dba=2)
    (index_dir / "photos" / "augmented-1.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="cbir"):
        with Searcher.open("photos", index_dir) as searcher:
            assert searcher.augmented is exact
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "augmented-1.npy" in warnings[0] and "run `cbir index`" in warnings[0]
    if exact:  # a flat snapshot holds the augmented vectors themselves: results as with the file
        _augmented_matches_catalogue(index_dir, "photos", 2)
    else:
        assert "use the original vectors" in warnings[0]
