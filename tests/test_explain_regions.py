"""--explain for results that were not verified: the regions their similarity came from (cbir.features.contributions)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.features.base import make_extractor
from cbir.features.contributions import activation_map, crop_map, extractor_direction, region_map, _onto_image
from cbir.features.pipeline import Embedder
from cbir.indexing.run import index_folder

runner = CliRunner()


def stripes(colour, size=(120, 160), seed=0) -> np.ndarray:
    """RGB: ``colour`` with some texture, so its histogram is not one bin."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), colour, np.uint8)
    noise = rng.integers(-25, 25, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def test_the_best_region_of_a_colour_match_is_where_the_query_colour_is():
    embedder = Embedder(make_extractor("color"))
    query = embedder.transform([stripes((200, 30, 30))])[0]
    image = stripes((30, 40, 200), size=(120, 240), seed=1)
    image[:, :100] = stripes((200, 30, 30), size=(120, 100), seed=2)  # the query's colour on the left
    found = region_map(embedder, image, query)
    assert found.kind == "regions"
    x0, y0, x1, y1 = found.box
    assert x1 <= 100 / 240 + 0.05 and (x1 - x0) * (y1 - y0) < 1.0
    half = found.grid.shape[1] // 2
    assert found.grid[:, :half].mean() > found.grid[:, half:].mean() + 0.3
    assert found.score > float(embedder.transform([image])[0] @ query)  # the region alone is closer than the whole


def test_activation_cells_are_each_ones_share_of_an_average_pooled_similarity():
    rng = np.random.default_rng(0)
    feature_map = rng.random((7, 7, 8)).astype(np.float32) * 0.1
    feature_map[4:, 4:, 0] += 2.0  # the bottom right carries the query's channel
    direction = np.eye(8, dtype=np.float32)[0]
    found = activation_map(feature_map, direction, "avg")
    row, col = np.unravel_index(np.argmax(found.grid), found.grid.shape)
    assert row >= 4 and col >= 4 and found.grid.max() == 1.0
    x0, y0, x1, y1 = found.box
    assert (x0 + x1) / 2 > 0.5 and (y0 + y1) / 2 > 0.5 and (x1 - x0) < 1.0
    # For average pooling the cells' scores sum to the pooled vector's dot product (times the cells).
    cells = feature_map @ direction
    assert np.isclose(cells.sum(), feature_map.mean(axis=(0, 1)) @ direction * 49, rtol=1e-5)


def test_the_query_direction_goes_back_through_pca_and_its_whitening():
    from cbir.features.pca import PCAReduction

    rng = np.random.default_rng(1)
    vectors = rng.random((60, 12)).astype(np.float32)
    for whiten in (False, True):
        pca = PCAReduction(4, whiten=whiten).fit(vectors)
        query = pca.transform(vectors[:1])[0]
        direction = extractor_direction(Embedder(make_extractor("color"), pca), query)
        # Moving an input along the direction raises its similarity to the query; against it lowers it.
        x = vectors[5]
        up, down = (float(pca.transform((x + s * 0.05 * direction)[None])[0] @ query) for s in (1, -1))
        assert up > down and np.isclose(np.linalg.norm(direction), 1.0)


def test_a_cropped_or_padded_input_maps_back_onto_the_whole_image():
    grid = np.ones((4, 4), np.float32)
    # pad: a 2:1 image fills the middle half of the square input's rows.
    padded_grid, box = _onto_image(grid, (0.0, 0.25, 0.5, 0.75), "pad", (100, 200))
    assert np.allclose(box, (0.0, 0.0, 0.5, 1.0)) and padded_grid.shape == (2, 4)
    # crop: the input saw the centre half of a 2:1 image's columns.
    cropped_grid, box = _onto_image(grid, (0.0, 0.0, 1.0, 1.0), "crop", (100, 200))
    assert np.allclose(box, (0.25, 0.0, 0.75, 1.0)) and cropped_grid.shape == (4, 8)
    assert cropped_grid[:, :2].max() == 0 and cropped_grid[:, 2:6].min() == 1


def test_a_cnn_explains_from_its_last_feature_map(tiny_cnn):
    embedder = Embedder(tiny_cnn)
    image = stripes((200, 30, 30), size=(48, 64))
    query = embedder.transform([stripes((30, 200, 30))])[0]
    assert tiny_cnn.feature_map(tiny_cnn.prepare(image)).shape == (1, 1, tiny_cnn.dim)
    found = region_map(embedder, image, query)
    assert found.kind == "activation" and found.grid.shape == (1, 1) and found.box == (0.0, 0.0, 1.0, 1.0)


@pytest.fixture
def colours(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for n, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 40, 200), (200, 200, 30)]):
        image = stripes((30, 40, 200), size=(120, 240), seed=n)
        image[:, :90] = stripes(colour, size=(120, 90), seed=10 + n)
        cv2.imwrite(str(root / f"c{n}.png"), image[:, :, ::-1])
    return root


def test_explain_without_local_features_draws_regions_on_the_montage_and_gallery(colours, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(colours, "c", index_dir, workers=1)
    query = tmp_path / "q.png"
    cv2.imwrite(str(query), stripes((200, 30, 30))[:, :, ::-1])
    base = ["query", str(query), "--name", "c", "--index-dir", str(index_dir), "-k", "3"]
    plain, explained, page = tmp_path / "plain.png", tmp_path / "explained.png", tmp_path / "page.html"
    assert runner.invoke(app, [*base, "--montage", str(plain)]).exit_code == 0
    result = runner.invoke(app, [*base, "--explain", "--montage", str(explained), "--html", str(page)])
    assert result.exit_code == 0, result.output  # no local features: regions only, no error
    plain_image, explained_image = cv2.imread(str(plain)), cv2.imread(str(explained))
    below = explained_image[plain_image.shape[0] :]
    frame = (below[:, :, 2] > 200) & (below[:, :, 1] > 30) & (below[:, :, 1] < 90) & (below[:, :, 0] < 40)  # the orange box (BGR)
    assert frame.sum() > 300
    html = page.read_text()
    assert html.count("most similar in the framed region") == 3 and html.count("data:image/png") == 3


def test_the_api_explains_on_request(colours, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cbir.server.app import create_app

    index_dir = tmp_path / "indexes"
    index_folder(colours, "c", index_dir, workers=1)
    ok, encoded = cv2.imencode(".png", stripes((200, 30, 30))[:, :, ::-1])
    upload = {"file": ("q.png", encoded.tobytes(), "image/png")}
    with TestClient(create_app(index_dir), raise_server_exceptions=False) as client:
        plain = client.post("/api/indexes/c/search?k=2", files=upload).json()["results"]
        assert all("region" not in r for r in plain)
        found = client.post("/api/indexes/c/search?k=2&explain", files=upload).json()["results"]
        assert [r["id"] for r in found] == [r["id"] for r in plain]
        region = found[0]["region"]
        assert region["kind"] == "regions" and len(region["box"]) == 4 and region["box"][2] <= 0.5  # the red part, on the left
        assert "verified" not in found[0]  # no local features: nothing verified
        by_id = client.post("/api/indexes/c/search?explain=true", json={"id": found[0]["id"], "k": 2}).json()["results"]
        assert all("region" in r for r in by_id)
        bad = client.post("/api/indexes/c/search?explain=maybe", files=upload)
        assert bad.status_code == 422 and "explain" in bad.json()["error"]
