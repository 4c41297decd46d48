"""Spatial verification (cbir index --local-features, cbir query --verify) and why a match was made (--explain)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.ann.verify import MIN_INLIERS
from cbir.cli import app
from cbir.cli._common import with_optional_values
from cbir.features.local import LocalFeatureConfig, pack, unpack
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.retrieval.verified import verify_shortlist
from cbir.store.catalogue import Catalogue

from conftest import slowed_indexer

runner = CliRunner()


def scene(seed: int, size=(240, 320)) -> np.ndarray:
    """A BGR picture with many corners and blobs: something local features can hold on to."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.full((h, w, 3), rng.integers(40, 200, 3), np.uint8)
    for _ in range(70):
        colour = [int(c) for c in rng.integers(0, 256, 3)]
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 40))), colour, -1)
        else:
            cv2.circle(image, (x, y), int(rng.integers(3, 20)), colour, -1)
    return cv2.GaussianBlur(image, (0, 0), 0.8)


def warped(image: np.ndarray, angle=25.0, scale=0.8, crop=0.12) -> np.ndarray:
    """Rotated, scaled and cropped: the same scene as another photo of it might show it."""
    h, w = image.shape[:2]
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), (w, h), borderMode=cv2.BORDER_REFLECT)
    dy, dx = int(h * crop), int(w * crop)
    return rotated[dy : h - dy, dx : w - dx]


def rgb(bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for n in range(6):
        cv2.imwrite(str(root / ("a" if n < 3 else "b") / f"scene-{n}.png"), scene(n))
    return root


def test_verification_ranks_a_warped_copy_above_a_distinct_image_with_a_higher_global_score():
    extractor = LocalFeatureConfig().extractor()
    original, distinct = extractor(rgb(scene(1))), extractor(rgb(scene(2)))
    query = extractor.features(rgb(warped(scene(1))))
    stored = {10: distinct, 11: original}.get
    order, checks = verify_shortlist(query, [10, 11], np.array([0.9, 0.4]), lambda ids: {i: stored(i) for i in ids})
    assert order.tolist() == [1, 0]  # the copy first, though its global score is lower
    assert checks[1].verified and checks[1].inliers >= MIN_INLIERS
    assert not checks[0].verified


def test_local_features_pack_into_a_bounded_record_and_round_trip():
    for kind in ("rootsift", "orb"):
        config = LocalFeatureConfig(kind)
        assert LocalFeatureConfig.from_dict(config.to_dict()) == config
        features = config.extractor().features(rgb(scene(3)))
        data = pack(features)
        assert 0 < len(features) <= config.max_keypoints and len(data) <= config.max_bytes <= 40_000
        back = unpack(data)
        assert back.kind == kind and np.array_equal(back.descriptors, features.descriptors)
        assert np.allclose(back.xy, features.xy, atol=1e-3) and back.xy.min() >= 0 and back.xy.max() <= 1
    with pytest.raises(ValueError):
        unpack(b"LF1" + b"\x00" * 10)


def test_verify_and_local_features_options_take_an_optional_value(tmp_path):
    options = {"--verify", "--local-features"}
    folder = str(tmp_path)
    assert with_optional_values(["q.jpg", "--verify"], options) == ["q.jpg", "--verify", "100"]
    assert with_optional_values(["--verify", "q.jpg", "-k", "3"], options) == ["--verify", "100", "q.jpg", "-k", "3"]
    assert with_optional_values(["--verify", "7"], options) == ["--verify", "7"]
    assert with_optional_values(["--verify", "-3"], options) == ["--verify", "-3"]  # refused later, by value
    assert with_optional_values(["--local-features", "orb", folder], options) == ["--local-features", "orb", folder]
    assert with_optional_values(["--local-features", folder], options) == ["--local-features", "rootsift", folder]
    assert with_optional_values([folder, "--local-features", "--json"], options) == [folder, "--local-features", "rootsift", "--json"]
    result = runner.invoke(app, ["index", folder, "--name", "x", "--index-dir", str(tmp_path / "i"), "--local-features", "sift2"])
    assert result.exit_code != 0 and result.output.strip().splitlines() == [
        "error: --local-features takes rootsift or orb, got 'sift2'"
    ], result.output


def test_verified_query_end_to_end_and_features_added_without_re_embedding(photos, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, workers=1)
    query = tmp_path / "query.png"
    cv2.imwrite(str(query), warped(scene(4)))

    # An index without local features: one error line saying how to add them.
    result = runner.invoke(app, ["query", str(query), "--name", "p", "--index-dir", str(index_dir), "--verify"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--local-features" in lines[0] and "re-embedded" in lines[0]

    catalogue = index_dir / "p" / "catalogue.sqlite"
    before = _vectors(catalogue)
    summary = index_folder(photos, "p", index_dir, local_features=True)
    assert summary.embedded == 0 and summary.local_features_added == 6
    assert _vectors(catalogue) == before  # the same rows, ids and vectors
    manifest = json.loads((index_dir / "p" / "manifest.json").read_text())
    assert manifest["local_features"] == LocalFeatureConfig().to_dict()

    with Searcher.open("p", index_dir, verify=5) as searcher:
        assert searcher.verify == 5 and searcher.local_config == LocalFeatureConfig()
        found = searcher.query(str(query), k=3).results
    assert found[0].path.endswith("scene-4.png") and found[0].verified and found[0].inliers >= MIN_INLIERS
    assert not any(m.verified for m in found[1:])

    result = runner.invoke(app, ["query", str(query), "--name", "p", "--index-dir", str(index_dir), "--verify", "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["results"][0]
    assert top["verified"] is True and top["inliers"] == found[0].inliers
    result = runner.invoke(app, ["query", str(query), "--name", "p", "--index-dir", str(index_dir), "--verify", "-k", "2"])
    assert f"verified ({found[0].inliers} inliers)" in result.stdout.splitlines()[0]

    # An update: unchanged files keep theirs; a changed file gets new ones; nothing else is decoded.
    stored_before = Catalogue(catalogue).local_features(range(1, 7))
    cv2.imwrite(str(photos / "a" / "scene-0.png"), scene(40))
    summary = index_folder(photos, "p", index_dir)
    assert summary.updated == 1 and summary.local_features_added == 0
    with Catalogue(catalogue) as db:
        rows = db.images_under(str(photos))
        now = db.local_features([row.id for row in rows.values()])
    assert len(now) == 6
    kept = [row.id for path, row in rows.items() if not path.endswith("scene-0.png")]
    assert all(now[i] == stored_before[i] for i in kept)


def _vectors(catalogue) -> list:
    with sqlite3.connect(catalogue) as db:
        return db.execute("SELECT id, path, vector FROM images ORDER BY id").fetchall()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_verify_below_one_is_one_error_line(photos, tmp_path, value):
    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, local_features="orb", workers=1)
    for command in (["query", str(photos / "a" / "scene-0.png")], ["evaluate"]):
        result = runner.invoke(app, [*command, "--name", "p", "--index-dir", str(index_dir), "--verify", value])
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "--verify" in lines[0], result.output


def test_evaluate_with_verify_matches_query_ranking(photos, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, local_features=True, workers=1)
    result = runner.invoke(app, ["evaluate", "--name", "p", "--index-dir", str(index_dir), "--verify", "--json"])
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(result.stdout)["map"] <= 1


def test_explain_draws_the_correspondences(photos, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, local_features=True, workers=1)
    query = tmp_path / "query.png"
    cv2.imwrite(str(query), warped(scene(4)))
    base = ["query", str(query), "--name", "p", "--index-dir", str(index_dir), "-k", "2", "--verify"]
    plain, explained, page = tmp_path / "plain.png", tmp_path / "explained.png", tmp_path / "page.html"
    assert runner.invoke(app, [*base, "--montage", str(plain)]).exit_code == 0
    result = runner.invoke(app, [*base, "--montage", str(explained), "--explain", "--html", str(page)])
    assert result.exit_code == 0, result.output
    plain_image, explained_image = cv2.imread(str(plain)), cv2.imread(str(explained))
    assert plain_image is not None and explained_image is not None
    assert explained_image.shape[0] > plain_image.shape[0]
    below = explained_image[plain_image.shape[0] :]
    lines = (below[:, :, 1] > 140) & (below[:, :, 0] < 90) & (below[:, :, 2] < 90)  # the green correspondences
    assert lines.sum() > 200
    html = page.read_text()
    assert "verified: " in html and html.count("data:image/png") == 2  # one explanation panel per match
    result = runner.invoke(app, ["query", str(query), "--name", "p", "--index-dir", str(index_dir), "--explain"])
    assert result.exit_code != 0 and "--montage" in result.output


SLOW_INDEXER = slowed_indexer("big", 0.05, workers=1, local_features="orb")


def test_local_features_survive_a_sigkill_mid_index(tmp_path):
    root, index_dir = tmp_path / "photos", tmp_path / "indexes"
    root.mkdir()
    for n in range(80):
        cv2.imwrite(str(root / f"s{n:03d}.png"), scene(n, size=(96, 128)))
    process = subprocess.Popen([sys.executable, "-c", SLOW_INDEXER, str(root), str(index_dir)])
    catalogue = index_dir / "big" / "catalogue.sqlite"
    deadline = time.monotonic() + 60
    while _count(catalogue) < 20 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    images, features = _counts(catalogue)
    assert 20 <= images < 80 and features == images  # committed together: never one without the other

    index_folder(root, "big", index_dir, workers=1)  # resumes with the index's own setting
    images, features = _counts(catalogue)
    assert images == features == 80
    with sqlite3.connect(catalogue) as db:
        assert db.execute("SELECT COUNT(*) FROM local_features WHERE id NOT IN (SELECT id FROM images)").fetchone()[0] == 0


def _count(catalogue) -> int:
    try:
        return _counts(catalogue)[0]
    except sqlite3.Error:
        return 0


def _counts(catalogue) -> tuple[int, int]:
    with sqlite3.connect(catalogue, timeout=5) as db:
        return (
            db.execute("SELECT COUNT(*) FROM images").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM local_features").fetchone()[0],
        )


def test_the_http_api_verifies_on_request(photos, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cbir.server.app import create_app

    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, workers=1)
    ok, encoded = cv2.imencode(".png", warped(scene(4)))
    upload = {"file": ("q.png", encoded.tobytes(), "image/png")}
    with TestClient(create_app(index_dir, refresh_interval=0.1), raise_server_exceptions=False) as client:
        plain = client.post("/api/indexes/p/search?k=2", files=upload)
        assert plain.status_code == 200 and "verified" not in plain.json()["results"][0]
        missing = client.post("/api/indexes/p/search?k=2&verify=10", files=upload)
        assert missing.status_code == 400 and "--local-features" in missing.json()["error"]
        index_folder(photos, "p", index_dir, local_features=True)
        deadline = time.monotonic() + 20
        while True:  # the server notices the new commit within its refresh interval
            response = client.post("/api/indexes/p/search?k=2&verify=10", files=upload)
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.json()
        found = response.json()["results"]
        assert found[0]["verified"] is True and found[0]["inliers"] >= MIN_INLIERS and found[1]["verified"] is False
        by_id = client.post("/api/indexes/p/search?verify", json={"id": 1, "k": 1}).json()["results"]
        assert by_id[0]["verified"] is True
        for bad in ("0", "-2", "lots"):
            response = client.post(f"/api/indexes/p/search?k=2&verify={bad}", files=upload)
            assert response.status_code == 422 and "verify" in response.json()["error"]


def test_local_features_come_from_a_decode_as_large_as_they_need(tmp_path):
    from cbir.compute.work import load_file
    from cbir.images.decode import read_image

    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(scene(5), (1024, 768)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    extractor = LocalFeatureConfig().extractor()
    loaded = load_file(big, min_side=32, local=extractor)  # the colour extractor decodes at 1/8: 128 x 96
    assert min(loaded.image.shape[:2]) < 100
    expected = extractor(read_image(big, min_side=extractor.decode_min_side))
    assert loaded.local_features == expected and len(unpack(expected)) > 40


def test_several_examples_are_each_verified_and_say_which(photos, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, local_features=True, workers=1)
    first, second = tmp_path / "q1.png", tmp_path / "q2.png"
    cv2.imwrite(str(first), warped(scene(4)))
    cv2.imwrite(str(second), warped(scene(1), angle=-20, scale=0.9))
    base = ["query", str(first), str(second), "--name", "p", "--index-dir", str(index_dir), "-k", "3"]
    result = runner.invoke(app, [*base, "--verify", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["results"]
    top = {m["path"].rsplit("/", 1)[-1]: m for m in found[:2]}
    assert set(top) == {"scene-4.png", "scene-1.png"}  # each example's scene, verified by that example
    assert top["scene-4.png"]["verified"] and top["scene-4.png"]["verified_with"] == 0
    assert top["scene-1.png"]["verified"] and top["scene-1.png"]["verified_with"] == 1
    assert found[2]["verified"] is False and "verified_with" not in found[2]
    # An example to avoid is not verified against: the positive's scene still comes first, verified.
    result = runner.invoke(app, ["query", str(first), "--not", str(second), *base[3:], "--verify", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["results"][0]
    assert top["path"].endswith("scene-4.png") and top["verified"] and top["verified_with"] == 0
    # Without --verify nothing is checked.
    plain = json.loads(runner.invoke(app, [*base, "--json"]).stdout)["results"]
    assert all("verified" not in m for m in plain)
    # --explain draws each match against the example that verified it.
    montage = tmp_path / "m.png"
    result = runner.invoke(app, [*base, "--explain", "--montage", str(montage)])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(montage)) is not None


def test_the_http_api_verifies_several_examples(photos, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cbir.server.app import create_app

    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, local_features=True, workers=1)
    with Searcher.open("p", index_dir) as searcher:
        ids = {row.path.rsplit("/", 1)[-1]: row.id for row in searcher.image_rows()}
    ok, encoded = cv2.imencode(".png", warped(scene(4)))
    with TestClient(create_app(index_dir, refresh_interval=0.1), raise_server_exceptions=False) as client:
        response = client.post(
            "/api/indexes/p/search?k=2&verify=10",
            files=[("file", ("q.png", encoded.tobytes(), "image/png"))],
            data={"positive": str(ids["scene-1.png"])},
        )
        assert response.status_code == 200, response.json()
        found = response.json()["results"]
        # The upload verifies its scene; the id example is left out of the results (as every example is).
        assert found[0]["path"].endswith("scene-4.png") and found[0]["verified"] and found[0]["verified_with"] == 0
        assert all(not m["path"].endswith("scene-1.png") for m in found)
        plain = client.post("/api/indexes/p/search?k=2", json={"positive": [ids["scene-1.png"], ids["scene-4.png"]]}).json()
        assert all("verified" not in m for m in plain["results"])


def test_info_shows_the_local_features_kept(photos, tmp_path):
    index_dir = tmp_path / "indexes"
    index_folder(photos, "p", index_dir, workers=1)
    result = runner.invoke(app, ["info", "p", "--index-dir", str(index_dir)])
    assert result.exit_code == 0 and "local feat. none (cbir index FOLDER --name p --local-features" in result.stdout
    assert json.loads(runner.invoke(app, ["info", "p", "--index-dir", str(index_dir), "--json"]).stdout)["local_features"] is None

    index_folder(photos, "p", index_dir, local_features="orb")
    with Catalogue(index_dir / "p" / "catalogue.sqlite") as db:
        records = db.local_features(range(1, 7))
    keypoints = [len(unpack(data)) for data in records.values()]
    data = json.loads(runner.invoke(app, ["info", "p", "--index-dir", str(index_dir), "--json"]).stdout)["local_features"]
    assert data["kind"] == "orb" and data["images"] == 6
    assert data["mean_keypoints"] == round(sum(keypoints) / 6, 1) and data["bytes"] == sum(len(r) for r in records.values())
    text = runner.invoke(app, ["info", "p", "--index-dir", str(index_dir)]).stdout
    assert f"local feat. orb: 6 of 6 images, {sum(keypoints) / 6:.0f} keypoints and" in text
