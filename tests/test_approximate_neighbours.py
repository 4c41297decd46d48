"""DBA's approximate neighbour search: close to exact, only above its threshold, consistent across updates and kills."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cbir.ann import approximate
from cbir.ann.rerank import augment_rows, nearest_neighbours, search_nearest_neighbours, search_top_k, top_k
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.store.catalogue import NewImage
from cbir.store.dba import dba_config
from cbir.store.directory import IndexStore
from cbir.store.writer import open_writer

DIM = 160  # the colour extractor of _write (bins 4, 4, 2), above PROJECTED_DIM: the projection is used


def clustered(n, seed=0, dim=DIM):
    """Unit vectors in clusters of a 24-d subspace plus noise, like image descriptors."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, 24)))[0].T
    centres = np.random.default_rng(98).normal(size=(40, 24))
    latent = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, 24))
    rows = (latent @ basis + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())])


@pytest.fixture
def approximate_from_500(monkeypatch):
    monkeypatch.setattr(approximate, "APPROXIMATE_FROM", 500)


@pytest.mark.parametrize("k", [2, 5])
def test_approximate_neighbours_match_exact_ones_with_exact_scores(approximate_from_500, k):
    vectors = clustered(3000)
    rows, scores = search_nearest_neighbours(vectors, k)
    exact_rows, _ = nearest_neighbours(vectors, k)
    assert recall(rows, exact_rows) >= 0.95
    assert (rows >= 0).all() and not (rows == np.arange(3000)[:, None]).any()  # never itself
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", vectors, vectors[rows]), atol=1e-5)  # re-scored exactly
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


def test_below_the_threshold_the_search_is_exact_and_does_not_touch_faiss(monkeypatch):
    monkeypatch.setattr(approximate, "APPROXIMATE_FROM", 5000)
    monkeypatch.setattr(approximate, "approximate_top_k", None)  # any call would fail
    vectors = clustered(1200)
    np.testing.assert_array_equal(search_nearest_neighbours(vectors, 3)[0], nearest_neighbours(vectors, 3)[0])
    np.testing.assert_array_equal(search_top_k(vectors[:50], vectors, 3)[0], top_k(vectors[:50], vectors, 3)[0])


def test_the_rule_goes_approximate_for_a_large_first_build_not_for_a_few_queries():
    n = approximate.APPROXIMATE_FROM
    assert not approximate.search_rule(n - 1, n - 1, 2).approximate
    assert approximate.search_rule(n, n, 2).approximate
    assert not approximate.search_rule(100, 10 * n, 2).approximate  # a few re-searched images: exact is cheaper
    rule = approximate.search_rule(1_000_000, 1_000_000, 2)
    assert rule.nlist == 4096 and rule.nprobe == 16 and rule.candidates == approximate.candidate_count(2)


def test_approximate_top_k_leaves_out_own_rows_and_pads_short_lists(approximate_from_500):
    vectors = clustered(600)
    rows, scores = search_top_k(vectors, vectors[:3], 5, own_rows=np.array([0, 1, 2] + [-1] * 597))
    assert rows.shape == (600, 5) and (rows[:, 3:] == -1).all() and np.isinf(scores[:, 3:]).all()
    assert not (rows[:3] == np.arange(3)[:, None]).any()


def _write(path, vectors, first=0, remove=()):
    with open_writer(path) as writer:
        if writer.created:
            writer.create(Embedder(make_extractor("color", bins=[4, 4, 2])), "flat", len(vectors), dba=dba_config(2, 3.0))
        if remove:
            writer.remove(list(remove))
        if len(vectors):
            writer.add([NewImage(f"/p/{first + i}.jpg", 1, 1, f"{first + i:064x}", "a", v) for i, v in enumerate(vectors)])
        writer.finish()


def _snapshot(path):
    """(ids, originals, augmented, neighbour ids, scores) of the snapshot in force."""
    with IndexStore.open(path) as store:
        name = store.catalogue.get_meta("augmented_file")
        ids, originals = map(np.concatenate, zip(*store.catalogue.iter_vectors(store.dim)))
    stem = path / name[: -len(".npy")]
    return (ids, originals, *(np.load(f"{stem}{suffix}.npy") for suffix in ("", ".neighbours", ".scores")))


def test_an_update_after_an_approximate_first_build_stays_consistent(tmp_path, approximate_from_500):
    vectors = clustered(2500, seed=1)
    _write(tmp_path / "idx", vectors)
    _write(tmp_path / "idx", clustered(300, seed=2), first=2500, remove=range(1, 101))  # 300 new, 100 gone
    ids, originals, augmented, neighbour_ids, scores = _snapshot(tmp_path / "idx")
    assert len(ids) == 2700 and set(neighbour_ids.ravel()) <= set(ids.tolist())  # nobody averaged with a removed image
    rows = np.searchsorted(ids, neighbour_ids)
    assert not (rows == np.arange(len(ids))[:, None]).any()
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", originals, originals[rows]), atol=1e-5)
    # The snapshot is the average over the neighbours it records, and they are nearly the exact ones.
    np.testing.assert_allclose(augmented, augment_rows(originals, np.arange(len(ids)), rows, scores, 3.0), atol=1e-5)
    assert recall(rows, nearest_neighbours(originals, 2)[0]) >= 0.95


KILLED_DURING_DBA = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_approximate_neighbours import _write, clustered
    from cbir.ann import approximate
    approximate.APPROXIMATE_FROM = 500
    rescore = approximate._rescore
    def rescore_then_die(*args):
        rescore(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # in the middle of the neighbour search
    approximate._rescore = rescore_then_die
    _write(sys.argv[1], clustered(2000, seed=3))
    """
)


def test_a_run_killed_during_dba_resumes_to_the_same_index(tmp_path, approximate_from_500):
    killed = subprocess.run([sys.executable, "-c", KILLED_DURING_DBA, str(tmp_path / "killed"), os.path.dirname(__file__)])
    assert killed.returncode == -signal.SIGKILL
    with IndexStore.open(tmp_path / "killed") as store:
        assert store.catalogue.count_images() == 2000 and not store.catalogue.get_meta("augmented_file")
    _write(tmp_path / "killed", [])  # the next run only finishes
    _write(tmp_path / "whole", clustered(2000, seed=3))
    for resumed, whole in zip(_snapshot(tmp_path / "killed"), _snapshot(tmp_path / "whole")):
        np.testing.assert_array_equal(resumed, whole)
