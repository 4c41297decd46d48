"""The duplicate review over HTTP (in process) and in a real browser: groups, keepers, a person's choice, exports."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from cbir.server import create_app  # noqa: E402
from cbir.server.access import Access  # noqa: E402
from test_duplicates_review import shoot  # noqa: E402,F401  (the fixture)


@pytest.fixture
def client(shoot, tmp_path):  # noqa: F811
    with TestClient(create_app(tmp_path / "indexes"), raise_server_exceptions=False) as client:
        yield client


def review_of(found: dict, keep: dict[int, int] | None = None) -> dict:
    groups = found["exact"] + found["near"]
    keep = keep or {}
    return {"groups": [{"tier": g["tier"], "ids": [f["id"] for f in g["files"]], "keep": keep.get(g["group"], g["keep_id"]), "min_score": g["min_score"]} for g in groups]}


def test_groups_with_keepers_and_an_export_that_follows_a_persons_choice(client, shoot):  # noqa: F811
    found = client.get("/api/indexes/shoot/duplicates", params={"threshold": "0.9"}).json()
    assert found["threshold"] == 0.9 and len(found["exact"]) == 1 and len(found["near"]) == 1
    near = found["near"][0]
    assert Path(near["keep"]).name == "scene0-big.png" and near["reason"].startswith("highest resolution")
    assert all(client.get(f["thumbnail_url"]).status_code == 200 for f in near["files"])
    small = next(f for f in near["files"] if f["path"].endswith("scene0-small.jpg"))

    suggested = client.post("/api/indexes/shoot/duplicates/export", json=review_of(found)).json()
    assert sorted(suggested["not_kept"]) == sorted(found["not_kept"])
    chosen = review_of(found, {near["group"]: small["id"]})
    exported = client.post("/api/indexes/shoot/duplicates/export", json=chosen).json()
    assert exported["near"][0]["keep"] == small["path"] and exported["near"][0]["reason"] == "chosen by a person"
    assert small["path"] not in exported["not_kept"] and near["keep"] in exported["not_kept"]
    table = client.post("/api/indexes/shoot/duplicates/export", params={"format": "csv"}, json=chosen)
    assert table.headers["content-type"].startswith("text/csv") and "attachment" in table.headers["content-disposition"]
    rows = {(r["tier"], Path(r["path"]).name): r["keep"] for r in csv.DictReader(io.StringIO(table.text))}
    assert rows[("near", "scene0-small.jpg")] == "yes" and rows[("near", "scene0-big.png")] == "no"
    nul = client.post("/api/indexes/shoot/duplicates/export", params={"format": "nul"}, json=chosen).content
    assert sorted(nul.rstrip(b"\0").split(b"\0")) == sorted(os.fsencode(p) for p in exported["not_kept"])
    assert all(Path(p).exists() for p in exported["not_kept"])  # cbir deletes nothing


def test_exact_only_and_bad_reviews_are_one_line_errors(client):
    exact = client.get("/api/indexes/shoot/duplicates", params={"exact": "true"}).json()
    assert exact["near"] == [] and exact["threshold"] is None and len(exact["exact"]) == 1
    assert "cosine similarity" in client.get("/api/indexes/shoot/duplicates", params={"threshold": "2"}).json()["error"]
    ids = [f["id"] for f in exact["exact"][0]["files"]]
    post = lambda body, **kw: client.post("/api/indexes/shoot/duplicates/export", json=body, **kw)  # noqa: E731
    assert post({"groups": [{"tier": "exact", "ids": ids, "keep": 999}]}).status_code == 400
    assert post({"groups": [{"tier": "odd", "ids": ids, "keep": ids[0]}]}).status_code == 400
    assert post({"groups": [{"tier": "near", "ids": [ids[0], 10**6], "keep": ids[0]}]}).status_code == 404
    assert post({"groups": "x"}).status_code == 422 and post({"groups": []}, params={"format": "xml"}).status_code == 422
    assert client.get("/api/indexes/nope/duplicates").status_code == 404


def test_paths_stay_relative_where_the_server_may_not_show_them(shoot, tmp_path):  # noqa: F811
    app = create_app(tmp_path / "indexes", access=Access(show_paths=False))
    with TestClient(app) as client:
        found = client.get("/api/indexes/shoot/duplicates", params={"threshold": "0.9"}).json()
        assert all(not p.startswith("/") for p in found["not_kept"]) and found["near"][0]["keep"] == "shoot/scene0-big.png"
        nul = client.post("/api/indexes/shoot/duplicates/export", params={"format": "nul"}, json=review_of(found)).content
        assert b"/tmp" not in nul and b"shoot/scene0.jpg\0" in nul


def test_the_review_page_opens_without_a_token_and_its_data_needs_one(shoot, tmp_path):  # noqa: F811
    with TestClient(create_app(tmp_path / "indexes", access=Access(token="secret"))) as client:
        page = client.get("/duplicates")
        assert page.status_code == 200 and "duplicates.js" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/api/indexes/shoot/duplicates").status_code == 401
        assert client.get("/api/indexes/shoot/duplicates", headers={"X-CBIR-Token": "secret"}).status_code == 200


# -- the page in a real browser ----------------------------------------------------
def test_browser_review_shows_groups_and_changing_the_keeper_changes_the_export(shoot, tmp_path):  # noqa: F811
    from selenium.webdriver.support.ui import WebDriverWait

    from test_server_live import Server, _browser

    browser = _browser()
    server = Server(tmp_path / "indexes")
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(server.url + "/duplicates?index=shoot&threshold=0.9")
        wait.until(lambda b: b.execute_script("return document.querySelectorAll('#groups .group').length") == 2)
        groups = browser.execute_script(
            """return [...document.querySelectorAll('#groups .group')].map(g => ({
                tier: g.dataset.tier, reason: g.querySelector('.reason').textContent,
                files: [...g.querySelectorAll('.file')].map(f => ({id: f.dataset.id, name: f.querySelector('.name').textContent,
                    kept: f.classList.contains('kept'), checked: f.querySelector('input').checked}))}))"""
        )
        assert [g["tier"] for g in groups] == ["exact", "near"]
        near = groups[1]
        assert [f["name"] for f in near["files"] if f["kept"] and f["checked"]] == ["scene0-big.png"]
        assert "highest resolution" in near["reason"]
        wait.until(lambda b: b.find_element("id", "not-kept-count").text == "3")
        # The exact group's choice goes with its content, as the near group keeps scene0-big.png: the page says so.
        wait.until(lambda b: "not kept after all: near group 2" in b.find_elements("css selector", "#groups .group .reason")[0].text)
        chosen = browser.find_element("css selector", "#groups .group .file.kept")  # the exact group's choice
        assert "gone" in chosen.get_attribute("class")
        assert browser.execute_script("return getComputedStyle(arguments[0], '::after').content", chosen.find_element("css selector", ".keep")) == '"chosen, not kept"'
        before = not_kept(browser)
        assert any(line.endswith("scene0-small.jpg") for line in before)
        small = next(f for f in near["files"] if f["name"] == "scene0-small.jpg")
        browser.find_element("css selector", f"#groups .file[data-id='{small['id']}'] .keep").click()
        wait.until(lambda b: "chosen by a person" in b.find_elements("css selector", "#groups .group .reason")[1].text)
        after = not_kept(browser)
        assert any(line.endswith("scene0-big.png") for line in after) and not any(line.endswith("scene0-small.jpg") for line in after)
        exported = browser.execute_async_script("const done = arguments[0]; window.cbirDuplicates.exportText('csv').then(done)")
        rows = {(r["tier"], Path(r["path"]).name): r["keep"] for r in csv.DictReader(io.StringIO(exported))}
        assert rows[("near", "scene0-small.jpg")] == "yes" and rows[("near", "scene0-big.png")] == "no"
        nul = browser.execute_async_script("const done = arguments[0]; window.cbirDuplicates.exportText('nul').then(done)")
        assert sorted(nul.rstrip("\0").split("\0")) == sorted(after)
        wait.until(lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        out = Path(os.environ.get("CBIR_SCREENSHOTS", tmp_path))
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(out / "cbir-duplicates-desktop.png"))
        browser.set_window_size(390, 844)
        wait.until(lambda b: b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(out / "cbir-duplicates-phone.png"))
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()
        server.stop()


def not_kept(browser) -> list[str]:
    return browser.execute_script("return document.getElementById('not-kept').textContent").splitlines()
