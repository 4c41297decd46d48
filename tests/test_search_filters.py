"""Searches restricted to a folder or a label, and searches from several examples (issue 25)."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.ann.vectors import VectorIndex, build_vector_index, resolve_index_type
from cbir.errors import UsageError
from cbir.indexing.run import index_folder
from cbir.retrieval.examples import Example, combine_examples
from cbir.retrieval.filtered import AllowedIds, filtered_search
from cbir.retrieval.search import Searcher
from cbir.store.catalogue import ImageFilter
from conftest import coloured_image, make_collection, write_image


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """4,000 vectors in 40 clusters with ids 10, 13, 16...; every 100th allowed (a 1% filter)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    vectors = _unit(centres[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 32)))
    ids = np.arange(4000, dtype=np.int64) * 3 + 10
    return vectors, ids, ids[::100]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_a_filtered_search_returns_k_allowed_images_on_every_index_type(clustered, kind):
    vectors, ids, allowed_ids = clustered
    factory, params = resolve_index_type(kind, 32, len(vectors))
    index = build_vector_index(factory, 32, lambda: [(ids, vectors)], lambda n: vectors[:n])
    index.set_search_params(params)
    stored = dict(zip(ids.tolist(), vectors))
    index.exact_vectors = lambda wanted: (wanted, np.stack([stored[int(i)] for i in wanted]))
    allowed = AllowedIds(allowed_ids)
    queries = vectors[:20]
    scores, found = filtered_search(index, queries, 10, allowed, lambda wanted: np.stack([stored[int(i)] for i in wanted]))
    assert found.shape == (20, 10)
    assert np.isin(found, allowed_ids).all()  # every result allowed, never -1
    # The exact answer over the allowed vectors
    exact = np.argsort(-(queries @ vectors[::100].T), axis=1)[:, :10]
    recall = np.mean([len(set(found[q]) & set(allowed_ids[exact[q]])) / 10 for q in range(20)])
    assert recall == 1.0 if kind == "flat" else recall >= 0.9


def test_a_filter_allowing_fewer_than_k_returns_all_of_them(clustered):
    vectors, ids, _ = clustered
    index = build_vector_index("HNSW32", 32, lambda: [(ids, vectors)], lambda n: vectors[:n])
    few = ids[[5, 500, 3000]]
    scores, found = filtered_search(index, vectors[:2], 10, AllowedIds(few), lambda wanted: vectors[(wanted - 10) // 3])
    assert found.shape == (2, 3) and (np.sort(found, axis=1) == np.sort(few)).all()
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


@pytest.fixture
def two_albums(tmp_path):
    """photos/2019/<class>/... and photos/2020/<class>/...: the same three colour classes in two folders."""
    root = tmp_path / "photos"
    make_collection(root / "2019", per_class=4)
    make_collection(root / "2020", per_class=4)
    return root


def _labels(root):
    return {str(p): p.parent.name for p in root.rglob("*.jpg")}


def test_filters_restrict_results_to_a_folder_and_a_label(two_albums, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(two_albums, "photos", index_dir, labels=_labels(two_albums))
    query = next((two_albums / "2019" / "red").glob("*.jpg"))
    with Searcher.open("photos", index_dir) as searcher:
        under = str(two_albums / "2020")
        result = searcher.query(str(query), 6, image_filter=ImageFilter(under=under))
        assert len(result.results) == 6
        assert all(m.path.startswith(under + "/") for m in result.results)
        blue = searcher.query(str(query), 5, image_filter=ImageFilter(label="blue")).results
        assert len(blue) == 5 and {m.label for m in blue} == {"blue"}
        both = searcher.query(str(query), 10, image_filter=ImageFilter(under=under, label="blue")).results
        assert len(both) == 4 and all(m.label == "blue" and m.path.startswith(under) for m in both)  # all that exist
        # '2020' is a folder name, not a string prefix: photos/20 matches nothing
        assert searcher.query(str(query), 3, image_filter=ImageFilter(under=str(two_albums / "20"))).results == []
        by_id = searcher.query_id(searcher.image_rows()[0].id, 3, image_filter=ImageFilter(label="green")).results
        assert [m.label for m in by_id] == ["green"] * 3


def test_results_carry_label_folder_size_and_date(two_albums, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(two_albums, "photos", index_dir, labels=_labels(two_albums))
    query = next((two_albums / "2019" / "red").glob("*.jpg"))
    with Searcher.open("photos", index_dir) as searcher:
        top = searcher.query(str(query), 1).to_dict()["results"][0]
    assert top["label"] == "red" and top["folder"] == str(query.parent)
    assert top["size"] == query.stat().st_size
    assert top["mtime"].endswith("Z") and top["mtime"][:4].isdigit()


def test_combined_examples_favour_what_all_positives_share():
    a, b, c = np.eye(3, dtype=np.float32)
    both = combine_examples(np.stack([a, b]), [1, 1])
    assert np.allclose(both, _unit(np.array([[1, 1, 0]])))
    weighted = combine_examples(np.stack([a, b]), [2, 1])
    assert weighted[0, 0] > weighted[0, 1]
    away = combine_examples(np.stack([a]), [1], np.stack([_unit(np.array([[1.0, 0, 1]]))[0]]), [1])
    assert away[0, 2] < 0  # pushed away from what the negative has and the positive lacks
    with pytest.raises(UsageError):
        combine_examples(np.stack([a]), [1], np.stack([a]), [1], negative_weight=1.0)


def _half_and_half(left, right, seed):
    image = coloured_image(left, seed)
    image[:, image.shape[1] // 2 :] = coloured_image(right, seed + 1)[:, image.shape[1] // 2 :]
    return image


def test_an_image_like_both_positives_ranks_first_and_a_negative_pushes_its_lookalikes_down(tmp_path):
    root = tmp_path / "photos"
    red, blue, green = (40, 40, 220), (220, 40, 40), (40, 200, 40)
    for i in range(4):
        write_image(root / "red" / f"red-{i}.jpg", coloured_image(red, seed=i))
        write_image(root / "blue" / f"blue-{i}.jpg", coloured_image(blue, seed=10 + i))
        write_image(root / "green" / f"green-{i}.jpg", coloured_image(green, seed=20 + i))
    write_image(root / "mixed" / "red-and-blue.jpg", _half_and_half(red, blue, seed=30))
    index_dir = tmp_path / "indexes"
    index_folder(root, "photos", index_dir)
    with Searcher.open("photos", index_dir, expand=None) as searcher:
        rows = {row.path: row for row in searcher.image_rows()}
        red_id, blue_id, mixed_id = (rows[str(root / p)].id for p in ("red/red-0.jpg", "blue/blue-0.jpg", "mixed/red-and-blue.jpg"))
        result = searcher.query_examples([Example(red_id), Example(blue_id)], k=3, exclude_examples=True)
        assert {red_id, blue_id}.isdisjoint(m.id for m in result.results)
        assert result.results[0].id == mixed_id  # the one image like both
        # Like the mixed image, but not blue: every red before any blue.
        plain = [m.label for m in searcher.query_examples([Example(mixed_id)], k=8, exclude_examples=True).results]
        avoid = [Example(str(root / "blue" / "blue-1.jpg"))]
        refined = [m.label for m in searcher.query_examples([Example(mixed_id)], avoid, k=8, exclude_examples=True).results]
        assert plain.index("blue") < 4  # blue is among the first without the negative
        assert refined[:4] == ["red"] * 4
        with pytest.raises(UsageError):
            searcher.query_examples([], avoid)


def test_browsing_lists_the_images_a_filter_lets_through_a_page_at_a_time(tmp_path):
    """``Searcher.browse``: what the page's listing and the API's ``/images`` show, from the library."""
    make_collection(tmp_path / "photos" / "a", per_class=2)
    make_collection(tmp_path / "photos" / "b", per_class=2)
    labels = {str(p): p.parent.name for p in (tmp_path / "photos").rglob("*.jpg")}
    index_folder(tmp_path / "photos", "p", tmp_path / "ix", labels=labels)
    with Searcher.open("p", tmp_path / "ix") as searcher:
        pages = [searcher.browse(offset, 5) for offset in (0, 5, 10, 15)]
        assert [len(p.images) for p in pages] == [5, 5, 2, 0] and {p.total for p in pages} == {12}
        paths = [m.path for p in pages for m in p.images]
        assert paths == sorted(paths) and [m.rank for p in pages for m in p.images] == list(range(1, 13))
        red_in_b = searcher.browse(0, 100, ImageFilter(under=str(tmp_path / "photos" / "b"), label="red"))
        assert red_in_b.total == 2 and all("/b/red/" in m.path and m.label == "red" for m in red_in_b.images)
        item = red_in_b.to_dict()["results"][0]
        assert "score" not in item and item["size"] > 0 and item["exists"] is True
        for offset, limit in ((-1, 5), (0, 0)):
            with pytest.raises(UsageError, match="a page starts at offset 0"):
                searcher.browse(offset, limit)
