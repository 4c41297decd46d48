"""Filters on what photos say about themselves: date taken (else the file's time) and camera.

Library, CLI (query, evaluate, duplicates), API (query parameters, JSON,
facets); the same :class:`~cbir.store.catalogue.ImageFilter` everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.errors import UsageError
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.catalogue import ImageFilter
from conftest import CLASS_COLOURS, coloured_image, write_image
from photo_files import exif_bytes, write_jpeg

runner = CliRunner()


def _local(*when) -> float:
    return time.mktime((*when, 0, 0, -1))


@pytest.fixture()
def dated(tmp_path):
    """Two photos with EXIF (Canon 2021-06-05 14:03, iPhone 2023-07-14), a copy of the Canon one, two without
    (file times 2022-03-01 and 2019-01-01), and eight plain images dated 2018 by their file time."""
    root = tmp_path / "photos"
    red = coloured_image(CLASS_COLOURS["red"], 1)[:, :, ::-1]
    root.mkdir()
    write_jpeg(root / "canon.jpg", red,
               exif=exif_bytes(make="Canon", model="Canon EOS R5", taken="2021:06:05 14:03:09"))
    shutil.copy(root / "canon.jpg", root / "canon-copy.jpg")
    write_jpeg(root / "iphone.jpg", coloured_image(CLASS_COLOURS["red"], 2)[:, :, ::-1],
               exif=exif_bytes(make="Apple", model="iPhone 15", taken="2023:07:14 10:20:30"))
    for name, when in (("plain-2022.jpg", (2022, 3, 1, 12, 0, 0)), ("plain-2019.jpg", (2019, 1, 1, 12, 0, 0))):
        write_image(root / name, coloured_image(CLASS_COLOURS["green"], len(name)))
        os.utime(root / name, (_local(*when),) * 2)
    for n in range(8):
        path = write_image(root / "old" / f"old-{n}.jpg", coloured_image(CLASS_COLOURS["blue"], 10 + n))
        os.utime(path, (_local(2018, 5, 1, 9, 0, 0),) * 2)
    return root


def _names(result) -> set[str]:
    return {os.path.basename(m.path) for m in result.results}


CASES = [
    (dict(camera="canon"), {"canon.jpg", "canon-copy.jpg"}),
    (dict(camera="IPHONE 15"), {"iphone.jpg"}),
    (dict(camera="eos r5"), {"canon.jpg", "canon-copy.jpg"}),
    (dict(camera="nikon"), set()),
    (dict(taken_after="2022-01-01"), {"iphone.jpg", "plain-2022.jpg"}),
    (dict(taken_before="2021-06-05"), {"canon.jpg", "canon-copy.jpg", "plain-2019.jpg", *(f"old-{n}.jpg" for n in range(8))}),
    (dict(taken_before="2021-06-05T14:00"), {"plain-2019.jpg", *(f"old-{n}.jpg" for n in range(8))}),
    (dict(taken_after="2019-01-01", taken_before="2022-12-31"), {"canon.jpg", "canon-copy.jpg", "plain-2022.jpg", "plain-2019.jpg"}),
    (dict(taken_after="2021-01-01", camera="apple"), {"iphone.jpg"}),
]


@pytest.mark.parametrize("criteria, expected", CASES, ids=[str(c) for c, _ in CASES])
def test_date_and_camera_filters_in_the_library(dated, tmp_path, criteria, expected):
    index_folder(dated, "d", tmp_path / "idx")
    only = ImageFilter(**criteria)
    with Searcher.open("d", tmp_path / "idx") as searcher:
        assert _names(searcher.query(dated / "canon.jpg", k=100, image_filter=only)) == expected
        assert searcher.count_matching(only) == len(expected)
        # matches() (rows already read) agrees with the catalogue's SQL
        rows = searcher.image_rows()
        metadata = searcher.store.catalogue.metadata([r.id for r in rows])
        assert {os.path.basename(r.path) for r in rows if only.matches(r, metadata.get(r.id))} == expected


def test_approximate_indexes_still_return_k_filtered_results(dated, tmp_path):
    index_folder(dated, "h", tmp_path / "idx", index_type="hnsw")
    with Searcher.open("h", tmp_path / "idx") as searcher:
        result = searcher.query(dated / "iphone.jpg", k=8, image_filter=ImageFilter(taken_before="2018-12-31"))
    assert _names(result) == {f"old-{n}.jpg" for n in range(8)}


def test_a_date_that_is_not_iso_is_refused():
    with pytest.raises(UsageError, match="ISO date"):
        ImageFilter(taken_after="14/07/2023")
    assert ImageFilter(taken_after="2023-07-14T10:20:30+02:00").taken_after == "2023-07-14T10:20:30"


def test_cli_query_evaluate_and_duplicates_take_the_filters(dated, tmp_path):
    idx = str(tmp_path / "idx")
    index_folder(dated, "d", idx, labels={str(p): "x" if "canon" in p.name or "old" in p.name else p.stem for p in dated.rglob("*.jpg")})
    out = runner.invoke(app, ["query", str(dated / "iphone.jpg"), "--name", "d", "--index-dir", idx, "-k", "20", "--json",
                              "--taken-after", "2021-06-05", "--camera", "canon"])
    assert out.exit_code == 0, out.output
    assert {os.path.basename(r["path"]) for r in json.loads(out.stdout)["results"]} == {"canon.jpg", "canon-copy.jpg"}
    bad = runner.invoke(app, ["query", str(dated / "iphone.jpg"), "--name", "d", "--index-dir", idx, "--taken-before", "July"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines() == [
        "error: --taken-before takes an ISO date (2023-07-14) or date and time (2023-07-14T10:20), got 'July'"
    ]
    dups = runner.invoke(app, ["duplicates", "d", "--index-dir", idx, "--json", "--camera", "Canon"])
    groups = json.loads(dups.stdout)
    assert [sorted(os.path.basename(p) for p in g["paths"]) for g in groups["exact"]] == [["canon-copy.jpg", "canon.jpg"]]
    none = json.loads(runner.invoke(app, ["duplicates", "d", "--index-dir", idx, "--json", "--taken-after", "2023-01-01"]).stdout)
    assert none["exact"] == [] and none.get("near", []) == []
    evaluated = runner.invoke(app, ["evaluate", "d", "--index-dir", idx, "--json", "--taken-before", "2021-12-31"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    # canon.jpg, its copy and the eight 2018 images share label x and query; plain-2019 has no relevant image
    assert (report["n_queries"], report["queries_without_relevant"]) == (10, 1)


def test_api_filters_and_facets(dated, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
    from fastapi.testclient import TestClient

    from cbir.server import create_app

    index_folder(dated, "d", tmp_path / "idx")
    with TestClient(create_app(tmp_path / "idx"), raise_server_exceptions=False) as client:
        facets = client.get("/api/indexes/d/facets").json()
        assert facets["cameras"] == [{"camera": "Canon EOS R5", "count": 2}, {"camera": "Apple iPhone 15", "count": 1}]
        assert facets["taken"] == {"first": "2018-05-01T09:00:00", "last": "2023-07-14T10:20:30"}
        by_param = client.post("/api/indexes/d/search?taken_after=2022-01-01&k=20", json={"id": 1}).json()
        assert {os.path.basename(r["path"]) for r in by_param["results"]} == {"iphone.jpg", "plain-2022.jpg"}
        assert by_param["matching"] == 2
        by_json = client.post("/api/indexes/d/search", json={"id": 1, "k": 20, "camera": "iphone"}).json()
        assert [os.path.basename(r["path"]) for r in by_json["results"]] == ["iphone.jpg"]
        form = client.post("/api/indexes/d/search", files={"file": ("q.jpg", (dated / "canon.jpg").read_bytes())},
                           data={"taken_before": "2019-12-31", "k": "3"}).json()
        assert len(form["results"]) == 3 and all("old-" in r["path"] or "2019" in r["path"] for r in form["results"])
        listed = client.get("/api/indexes/d/images?camera=canon").json()  # browsing, without a query
        assert listed["total"] == 2 and {os.path.basename(r["path"]) for r in listed["results"]} == {"canon.jpg", "canon-copy.jpg"}
        assert client.get("/api/indexes/d/images?taken_after=2023-01-01").json()["total"] == 1
        bad = client.post("/api/indexes/d/search?taken_after=yesterday", json={"id": 1})
        assert bad.status_code == 400 and "ISO date" in bad.text


def test_page_filters_by_camera_and_date_with_screenshots(dated, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from test_server_live import Server, _browser, _grid, _start_search

    index_folder(dated, "photos", tmp_path / "idx")
    server = Server(tmp_path / "idx")
    browser = _browser()
    try:
        wait = _start_search(browser, server, dated / "canon.jpg", 6)
        cameras = [o.text for o in Select(browser.find_element(By.ID, "camera")).options]
        assert cameras == ["All cameras", "Canon EOS R5 (2)", "Apple iPhone 15 (1)"]
        assert browser.find_element(By.ID, "taken_after").get_attribute("min") == "2018-05-01"
        Select(browser.find_element(By.ID, "camera")).select_by_value("Apple iPhone 15")
        wait.until(lambda b: [r["name"] for r in _grid(b)] == ["iphone.jpg"])
        assert "camera=Apple+iPhone+15" in browser.current_url  # the filter is in the address: Back and sharing keep it
        assert "only 1 match the filter" in browser.find_element(By.ID, "status").text
        Select(browser.find_element(By.ID, "camera")).select_by_value("")
        browser.execute_script(
            "const d = document.getElementById('taken_before'); d.value = '2019-01-01'; d.dispatchEvent(new Event('change'))"
        )
        wait.until(lambda b: len(_grid(b)) == 6 and all(r["name"].startswith(("old-", "plain-2019")) for r in _grid(b)))
        out = Path(os.environ.get("CBIR_SCREENSHOTS", tmp_path))
        browser.save_screenshot(str(out / "cbir-date-filter-desktop.png"))
        browser.set_window_size(390, 844)
        wait.until(lambda b: b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
        browser.save_screenshot(str(out / "cbir-date-filter-phone.png"))
    finally:
        browser.quit()
        server.stop()


def _as_before_metadata(index_dir, name):
    """The index as an older cbir left it: schema 1 (no metadata, local features nor video frames)."""
    import sqlite3

    from cbir.store.catalogue import MIGRATIONS

    db = sqlite3.connect(index_dir / name / "catalogue.sqlite")
    images_v1 = MIGRATIONS[0][MIGRATIONS[0].index("CREATE TABLE images") : MIGRATIONS[0].index("CREATE TABLE skipped")]
    db.executescript(
        "ALTER TABLE images RENAME TO images_now; " + images_v1 +
        "INSERT INTO images SELECT id, path, size, mtime_ns, sha256, label, vector FROM images_now; "
        "DROP TABLE images_now; DROP TABLE image_metadata; DROP TABLE local_features; PRAGMA user_version = 1;"
    )
    db.close()


def test_an_index_from_before_metadata_gets_it_on_the_next_update_without_re_embedding(dated, tmp_path):
    idx = tmp_path / "idx"
    index_folder(dated, "old", idx)
    _as_before_metadata(idx, "old")
    with Searcher.open("old", idx) as searcher:  # read as it is: dates from the files' times, no camera known
        before = {r.path: (r.id, r.sha256) for r in searcher.image_rows()}
        vectors = {int(i): v.copy() for ids, block in searcher.iter_original_vectors() for i, v in zip(ids, block)}
        assert searcher.count_matching(ImageFilter(camera="canon")) == 0
        assert searcher.count_matching(ImageFilter(taken_before="2018-12-31")) == 8
    info = runner.invoke(app, ["info", "old", "--index-dir", str(idx)]).stdout
    assert "metadata    0 of 13 images: 0 dated by EXIF (0 by file time), 0 with a camera, 0 with a location; " \
           "13 indexed before metadata was kept" in info

    summary = index_folder(dated, "old", idx)
    assert (summary.metadata_added, summary.embedded, summary.added, summary.updated) == (13, 0, 0, 0)
    with Searcher.open("old", idx) as searcher:
        assert {r.path: (r.id, r.sha256) for r in searcher.image_rows()} == before  # same rows: nothing re-embedded
        for ids, block in searcher.iter_original_vectors():
            for i, v in zip(ids, block):
                np.testing.assert_array_equal(v, vectors[int(i)])
        assert _names(searcher.query(dated / "canon.jpg", k=20, image_filter=ImageFilter(camera="canon"))) == {"canon.jpg", "canon-copy.jpg"}
    info = runner.invoke(app, ["info", "old", "--index-dir", str(idx)]).stdout
    assert "metadata    13 of 13 images: 3 dated by EXIF (10 by file time), 3 with a camera, 0 with a location\n" in info
    assert index_folder(dated, "old", idx).metadata_added == 0  # once
