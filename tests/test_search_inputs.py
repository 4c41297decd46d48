"""Searcher.query takes a path, encoded bytes or a decoded array, and serves many threads at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from cbir.errors import ImageError, NotInIndexError
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher


@pytest.fixture
def searcher(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    with Searcher.open("photos", index_dir) as opened:
        yield opened


def _paths(result):
    return [m.path for m in result.results]


def test_path_bytes_and_arrays_give_the_same_results(searcher, collection):
    query = collection / "blue" / "blue-3.jpg"
    by_path = searcher.query(query, k=5)
    bgr = cv2.imread(str(query))
    by_bytes = searcher.query(query.read_bytes(), k=5)
    by_rgb = searcher.query(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), k=5)
    by_bgr = searcher.query(bgr, k=5, channels="BGR")
    assert _paths(by_path)[0] == str(query)
    assert _paths(by_bytes) == _paths(by_rgb) == _paths(by_bgr) == _paths(by_path)
    assert by_path.query == str(query) and by_bytes.query == "<bytes>" and by_rgb.query == "<array>"
    assert searcher.query(bytearray(query.read_bytes()), k=1, name="upload.jpg").query == "upload.jpg"


def test_channel_order_matters(searcher, collection):
    # A blue image read by OpenCV (BGR) but passed as RGB looks red: the parameter is not ignored.
    bgr = cv2.imread(str(collection / "blue" / "blue-0.jpg"))
    assert Path(searcher.query(bgr, k=1, channels="BGR").results[0].path).parent.name == "blue"
    assert Path(searcher.query(bgr, k=1, channels="RGB").results[0].path).parent.name != "blue"


def test_grey_and_alpha_arrays_are_accepted(searcher, collection):
    rgb = cv2.cvtColor(cv2.imread(str(collection / "red" / "red-1.jpg")), cv2.COLOR_BGR2RGB)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert _paths(searcher.query(rgba, k=3)) == _paths(searcher.query(rgb, k=3))
    assert len(searcher.query(rgb[:, :, 0], k=3).results) == 3


@pytest.mark.parametrize("wrong", [42, None, 3.5, ["a.jpg"], {"path": "a.jpg"}])
def test_a_wrong_type_is_a_type_error_with_a_sentence(searcher, wrong):
    with pytest.raises(TypeError, match=r"a query image must be a file path .* got "):
        searcher.query(wrong, k=1)


def test_arrays_that_are_not_images(searcher):
    with pytest.raises(ImageError, match="uint8"):
        searcher.query(np.zeros((8, 8, 3), np.float32), k=1)
    with pytest.raises(ImageError, match="shape"):
        searcher.query(np.zeros((8, 8, 5), np.uint8), k=1)
    with pytest.raises(ImageError, match="shape"):
        searcher.query(np.zeros((0, 8, 3), np.uint8), k=1)


def test_bytes_that_are_not_an_image(searcher):
    with pytest.raises(ImageError, match="not a readable image"):
        searcher.query(b"hello, world", k=1)
    with pytest.raises(ImageError, match="empty"):
        searcher.query(b"", k=1)


def test_query_by_id_uses_the_stored_vector(searcher, collection):
    query = collection / "green" / "green-4.jpg"
    image_id = searcher.query(query, k=1).results[0].id
    by_id = searcher.query_id(image_id, k=5)
    assert by_id.query == str(query) and _paths(by_id) == _paths(searcher.query(query, k=5))
    with pytest.raises(NotInIndexError, match="no image with id 999999"):
        searcher.query_id(999999, k=1)
    for beyond_sqlite in (2**63, -(2**63) - 1, 10**40):  # not an OverflowError from SQLite
        with pytest.raises(NotInIndexError, match="no image with id"):
            searcher.query_id(beyond_sqlite, k=1)


def test_many_threads_at_once_get_the_same_answers_as_one(searcher, collection):
    queries = sorted(collection.rglob("*.jpg")) * 4
    expected = [_paths(searcher.query(q, k=4)) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: _paths(searcher.query(q.read_bytes(), k=4)), queries))
    assert got == expected


def test_reopened_sees_new_commits_and_keeps_the_loaded_model(collection, index_dir):
    from conftest import coloured_image, write_image

    index_folder(collection, "photos", index_dir)
    with Searcher.open("photos", index_dir) as searcher:
        searcher.query(collection / "red" / "red-0.jpg", k=1)  # loads the model
        new = write_image(collection / "yellow" / "yellow-0.jpg", coloured_image((20, 220, 230), seed=3))
        index_folder(collection, "photos", index_dir)
        assert searcher.size == 15
        with searcher.reopened() as fresh:
            assert fresh.size == 16 and fresh.embedder is searcher.embedder
            assert fresh.query(new, k=1).results[0].path == str(new)
