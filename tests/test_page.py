"""The page in real Chromium (issue 25): browsing, paging, the address as state, the empty state, and each bug
found by trying it as a new user. Screenshots go to $CBIR_SCREENSHOTS (default: the test's tmp folder)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from cbir.indexing.run import index_folder  # noqa: E402
from conftest import CLASS_COLOURS, coloured_image, make_collection, write_image  # noqa: E402
from test_server_live import COREL, Server, _browser, _grid  # noqa: E402

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}


def _by():
    from selenium.webdriver.common.by import By

    return By


def _wait(browser, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, seconds)


def _status(browser) -> str:
    return browser.find_element(_by().ID, "status").text


def _address(browser) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(browser.current_url).query).items()}


def _open(browser, server, address: str = "/"):
    browser.get(server.url + address)
    _wait(browser).until(lambda b: b.find_elements(_by().CSS_SELECTOR, "#index option"))
    _wait(browser).until(lambda b: b.execute_script("return !document.body.hasAttribute('aria-busy')") and "…" not in _status(b))


def _settled(browser):
    """Wait until the last request is answered and every thumbnail shown has loaded."""
    _wait(browser).until(lambda b: b.execute_script("return !document.body.hasAttribute('aria-busy')") and "…" not in _status(b))
    _wait(browser).until(lambda b: b.execute_script("return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))


def _severe(browser, allowed=()) -> list:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def _phone(browser):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)


def _scrolls_sideways(browser) -> bool:
    return browser.execute_script("return document.documentElement.scrollWidth > document.documentElement.clientWidth")


def _screenshot(browser, name: str, tmp_path: Path) -> Path:
    out = Path(os.environ.get("CBIR_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 5_000
    return path


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory):
    """One server with two small indexes whose file names differ: ``alpha`` (red-0.jpg...) and ``beta`` (b-red-0.jpg...)."""
    root = tmp_path_factory.mktemp("page")
    make_collection(root / "alpha" / "2019", per_class=5)
    for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
        for n in range(5):  # the same names as 2019's, other pictures (no ties between the years)
            write_image(root / "alpha" / "2020" / name / f"{name}-{n}.jpg", coloured_image(colour, seed=300 + 10 * c + n))
        for n in range(4):
            write_image(root / "beta" / name / f"b-{name}-{n}.jpg", coloured_image(colour, seed=500 + 10 * c + n))
    labels = {str(p): p.parent.name for p in (root / "alpha").rglob("*.jpg")}
    index_folder(root / "alpha", "alpha", root / "indexes", labels=labels)
    index_folder(root / "beta", "beta", root / "indexes")
    server = Server(root / "indexes")
    yield server, root
    server.stop()


@pytest.fixture
def browser():
    started = _browser()
    yield started
    started.quit()


def test_browse_without_a_query_pages_by_folder_and_label(two_indexes, browser):
    server, root = two_indexes
    _open(browser, server, "/?index=alpha&k=8")
    _settled(browser)
    first = _grid(browser)
    assert len(first) == 8 and all(r["score"] == "" for r in first)  # a listing: no scores
    assert "1–8 of 30" in _status(browser) and browser.find_element(_by().ID, "page-info").text == "Page 1 of 4"
    browser.find_element(_by().ID, "next").click()
    _wait(browser).until(lambda b: _address(b).get("page") == "2" and "9–16 of 30" in _status(b))
    second = _grid(browser)
    assert not {r["id"] for r in first} & {r["id"] for r in second}
    browser.back()
    _wait(browser).until(lambda b: "1–8 of 30" in _status(b) and [r["id"] for r in _grid(b)] == [r["id"] for r in first])
    # By label, then by folder: the selects keep the listing to them, and the address says so.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(_by().ID, "label")).select_by_value("green")
    _wait(browser).until(lambda b: "of 10" in _status(b) and _address(b).get("label") == "green")
    details = browser.execute_script("return [...document.querySelectorAll('#results .details')].map(d => d.textContent)")
    assert details and all(d.startswith("green · ") for d in details)
    folder = next(f for f in Select(browser.find_element(_by().ID, "under")).options if f.get_attribute("value").endswith("2020/green"))
    Select(browser.find_element(_by().ID, "under")).select_by_value(folder.get_attribute("value"))
    _wait(browser).until(lambda b: "1–5 of 5" in _status(b) and _address(b).get("under", "").endswith("2020/green"))
    assert all("/2020/green/" in p for p in browser.execute_script("return [...document.querySelectorAll('#results .name')].map(d => d.title)"))
    assert _severe(browser) == []


def test_more_than_a_page_holds_is_an_error_not_a_silent_cut(two_indexes, browser):
    server, root = two_indexes
    browser.get(server.url + "/?index=alpha&k=5000")
    _wait(browser).until(lambda b: "failed" in _status(b))
    assert "limit must be from 1 to 1000 (page on with offset)" in _status(browser) and _grid(browser) == []
    k = browser.find_element(_by().ID, "k")
    k.clear()
    k.send_keys("1001\n")
    _wait(browser).until(lambda b: "from 1 to 1000" in _status(b) and "Results per page" in _status(b))
    k.clear()
    k.send_keys("10\n")
    _wait(browser).until(lambda b: "1–10 of 30" in _status(b) and _address(b).get("k") == "10")


def test_a_search_lives_in_the_address_back_works_and_a_bookmark_opens_it(two_indexes, browser):
    server, root = two_indexes
    _open(browser, server, "/?index=alpha&k=6")
    browser.find_element(_by().ID, "file").send_keys(str(root / "alpha" / "2019" / "blue" / "blue-1.jpg"))
    _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == "blue-1.jpg")
    third = _grid(browser)[2]
    browser.execute_script("document.querySelector(`#results .result[data-id='${arguments[0]}'] button.more`).click()", third["id"])
    _wait(browser).until(lambda b: _address(b).get("q") == third["id"] and _grid(b)[0]["id"] == third["id"])
    by_id = [r["id"] for r in _grid(browser)]
    # Next page: ranks 7-12 of the same search, as the API gives them with offset.
    browser.find_element(_by().ID, "next").click()
    _wait(browser).until(lambda b: _address(b).get("page") == "2" and "7–12 of 30" in _status(b))
    status, raw = server.request(
        "POST", "/api/indexes/alpha/search?k=6&offset=6", json.dumps({"id": int(third["id"])}).encode(), {"Content-Type": "application/json"}
    )
    assert [r["id"] for r in _grid(browser)] == [str(r["id"]) for r in json.loads(raw)["results"]]
    bookmark = browser.current_url
    browser.back()  # page 1 of the search by id
    _wait(browser).until(lambda b: "page" not in _address(b) and [r["id"] for r in _grid(b)] == by_id)
    browser.back()  # the upload, kept in memory
    _wait(browser).until(lambda b: "q" not in _address(b) and _grid(b) and _grid(b)[0]["name"] == "blue-1.jpg")
    browser.forward()
    _wait(browser).until(lambda b: [r["id"] for r in _grid(b)] == by_id)
    # The bookmark, opened afresh, shows the same page of the same search.
    browser.get("about:blank")
    browser.get(bookmark)
    _wait(browser).until(lambda b: "7–12 of 30" in _status(b))
    assert [r["id"] for r in _grid(browser)] == [str(r["id"]) for r in json.loads(raw)["results"]]
    assert browser.find_element(_by().ID, "query-caption").text == third["name"]
    assert _severe(browser) == []


def test_after_switching_index_no_tile_of_the_old_one_is_left_to_click(two_indexes, browser):
    """Found: tiles of the old index stayed and sent its ids to the new one (a beach shown over fountains)."""
    from selenium.webdriver.support.ui import Select

    server, root = two_indexes
    _open(browser, server, "/?index=alpha")
    browser.find_element(_by().ID, "file").send_keys(str(root / "alpha" / "2019" / "red" / "red-2.jpg"))
    _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == "red-2.jpg")
    second = _grid(browser)[1]
    browser.execute_script("document.querySelector('#results .result:nth-child(2) button.more').click()")  # a search by id
    _wait(browser).until(lambda b: _grid(b)[0]["id"] == second["id"] and b.find_element(_by().ID, "query-caption").text == second["name"])
    Select(browser.find_element(_by().ID, "index")).select_by_value("beta")
    _wait(browser).until(lambda b: _grid(b) and all(r["name"].startswith("b-") for r in _grid(b)))
    _settled(browser)
    tile = _grid(browser)[0]
    browser.execute_script("document.querySelector('#results .result button.more').click()")
    _wait(browser).until(lambda b: _address(b).get("q") == tile["id"] and _grid(b)[0]["id"] == tile["id"])
    assert _address(browser)["index"] == "beta" and _grid(browser)[0]["name"] == tile["name"]
    assert browser.find_element(_by().ID, "query-caption").text == tile["name"]


def test_a_failed_upload_leaves_neither_old_results_nor_a_broken_preview(two_indexes, browser, tmp_path):
    server, root = two_indexes
    _open(browser, server, "/?index=alpha")
    browser.find_element(_by().ID, "file").send_keys(str(root / "alpha" / "2019" / "red" / "red-2.jpg"))
    _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == "red-2.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a photo" * 20)
    browser.find_element(_by().ID, "file").send_keys(str(broken))
    _wait(browser).until(lambda b: "failed" in _status(b))
    assert "broken.jpg" in _status(browser) and "error" in browser.find_element(_by().ID, "status").get_attribute("class")
    assert _grid(browser) == []
    assert not browser.find_element(_by().ID, "query").is_displayed()


def test_choosing_the_same_file_twice_searches_again(two_indexes, browser):
    server, root = two_indexes
    query = root / "alpha" / "2020" / "green" / "green-3.jpg"
    _open(browser, server, "/?index=alpha")
    browser.find_element(_by().ID, "file").send_keys(str(query))
    _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == query.name)
    third = _grid(browser)[2]
    browser.execute_script("document.querySelector('#results .result:nth-child(3) button.more').click()")
    _wait(browser).until(lambda b: _grid(b)[0]["id"] == third["id"] and b.find_element(_by().ID, "query-caption").text == third["name"])
    _settled(browser)
    # The file input still holds green-3.jpg unless the page reset it: then choosing it again is no "change".
    browser.find_element(_by().ID, "file").send_keys(str(query))
    _wait(browser, 15).until(lambda b: _grid(b) and _grid(b)[0]["name"] == query.name)
    assert browser.execute_script("return document.getElementById('file').value") == ""


def test_an_image_dropped_outside_the_box_is_searched_not_opened(two_indexes, browser):
    server, root = two_indexes
    _open(browser, server, "/?index=alpha")
    _settled(browser)
    page = browser.current_url
    # A real file drag cannot be scripted in Chromium: the events a drop sends, with a real image, on the page's foot.
    prevented = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/api/indexes/alpha/thumbnails/1').then(r => r.blob()).then(blob => {
          const data = new DataTransfer();
          data.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
          const target = document.getElementById('status');
          const over = new DragEvent('dragover', {bubbles: true, cancelable: true, dataTransfer: data});
          const drop = new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: data});
          target.dispatchEvent(over);
          target.dispatchEvent(drop);
          done([over.defaultPrevented, drop.defaultPrevented]);
        });"""
    )
    assert prevented == [True, True]  # otherwise the browser opens the image in place of the page
    _wait(browser).until(lambda b: "dropped.jpg" in _status(b) and _grid(b) and _grid(b)[0]["score"])
    assert browser.current_url.startswith(page.split("?")[0])
    assert browser.find_element(_by().ID, "query-caption").text == "dropped.jpg"


def test_an_empty_index_folder_says_how_to_build_one_and_shows_it_once_built(collection, tmp_path, browser):
    index_dir = tmp_path / "indexes"
    server = Server(index_dir)
    try:
        assert any("no index yet" in line for line in server.lines)
        browser.get(server.url + "/")
        _wait(browser).until(lambda b: b.find_element(_by().ID, "empty").is_displayed())
        command = browser.find_element(_by().ID, "build-command").text
        assert command.startswith("cbir index FOLDER --name NAME --index-dir ") and str(index_dir) in command
        assert not browser.find_element(_by().ID, "query-area").is_displayed()
        _screenshot(browser, "cbir-empty-desktop.png", tmp_path)
        _phone(browser)
        assert not _scrolls_sideways(browser)
        _screenshot(browser, "cbir-empty-phone.png", tmp_path)
        index_folder(collection, "fresh", index_dir)
        # The running server picks it up (live.py's refresher), and the waiting page shows it.
        _wait(browser, 30).until(lambda b: _address(b).get("index") == "fresh" and "of 15" in _status(b))
        assert not browser.find_element(_by().ID, "empty").is_displayed() and len(_grid(browser)) == 12
        assert _severe(browser) == []
    finally:
        server.stop()


def test_a_cnn_index_header_names_its_extractor_in_short_without_server_paths(tmp_path, browser):
    """Found: the header showed the server's absolute weights path, and the page scrolled sideways at phone width."""
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    from test_cli_deep import _mobilenet_h5
    from typer.testing import CliRunner

    from cbir.cli import app as cli_app

    weights = _mobilenet_h5(tmp_path / "deep" / "folder" / "of" / "models" / "mobilenet-32px.h5")
    photos, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=3)
    built = CliRunner().invoke(
        cli_app, ["index", str(photos), "--name", "deep", "--index-dir", str(index_dir), "--weights", str(weights), "--input-size", "32"]
    )
    assert built.exit_code == 0, built.stderr
    server = Server(index_dir)
    try:
        _open(browser, server)
        _settled(browser)
        header = browser.find_element(_by().ID, "index-info").text
        assert header.startswith("cnn mobilenet (avg), weights mobilenet-32px.h5, ") and str(tmp_path) not in header
        status, raw = server.request("GET", "/api/indexes")
        assert str(weights.parent) not in raw.decode()
        browser.find_element(_by().ID, "file").send_keys(str(photos / "red" / "red-1.jpg"))
        _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == "red-1.jpg")
        _settled(browser)
        _phone(browser)
        time.sleep(0.3)  # a layout pass at the new width
        assert not _scrolls_sideways(browser)
        _screenshot(browser, "cbir-cnn-phone.png", tmp_path)
    finally:
        server.stop()


def test_at_phone_width_long_names_never_make_the_page_scroll_sideways(tmp_path, browser):
    """Found: the page scrolled sideways at 390 px; a long file name in the status line did it too."""
    photos = tmp_path / "photos"
    make_collection(photos, per_class=3)
    folder = photos / ("a-very-long-folder-name-without-any-spaces-" * 3)
    long_name = write_image(folder / ("IMG_2024_summer_holiday_at_the_seaside_" * 3 + ".jpg"), coloured_image((40, 40, 210), seed=9))
    labels = {str(p): "a-long-label-without-any-spaces-" * 3 for p in photos.rglob("*.jpg")}
    index_folder(photos, "photos", tmp_path / "indexes", labels=labels)
    server = Server(tmp_path / "indexes")
    try:
        _phone(browser)
        _open(browser, server)
        _settled(browser)
        assert not _scrolls_sideways(browser)  # browsing
        browser.find_element(_by().ID, "file").send_keys(str(long_name))
        _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == long_name.name)
        _settled(browser)
        assert not _scrolls_sideways(browser)  # a search, its caption and status
        browser.execute_script("document.querySelector('#results .result:nth-child(2) button.like').click()")
        _wait(browser).until(lambda b: "1 more" in _status(b))
        _settled(browser)
        assert not _scrolls_sideways(browser)  # and its chips
    finally:
        server.stop()


@pytest.fixture(scope="module")
def corel(tmp_path_factory):
    images = COREL / "images"
    if not images.is_dir():
        pytest.skip(f"Corel-1k is not at {COREL} (set CBIR_COREL)")
    index_dir = tmp_path_factory.mktemp("corel-page")
    index_folder(images, "corel", index_dir, labels=COREL / "labels.csv")
    server = Server(index_dir)
    yield server
    server.stop()


def test_screenshots_of_search_and_browse_at_desktop_and_phone_width(corel, browser, tmp_path):
    """What a person looks at: no sideways scrolling at 390 px, every thumbnail loaded, no console error."""
    _open(browser, corel, "/?index=corel&label=beach&k=12")
    _settled(browser)
    assert len(_grid(browser)) == 12 and not _scrolls_sideways(browser)
    _screenshot(browser, "cbir-browse-desktop.png", tmp_path)
    _open(browser, corel, "/?index=corel")
    browser.find_element(_by().ID, "file").send_keys(str(COREL / "images" / "305.jpg"))
    _wait(browser).until(lambda b: _grid(b) and _grid(b)[0]["name"] == "305.jpg")
    _settled(browser)
    browser.execute_script("document.querySelector('#results .result:nth-child(2) button.like').click()")
    _wait(browser).until(lambda b: "1 more" in _status(b))
    _settled(browser)
    _screenshot(browser, "cbir-search-desktop.png", tmp_path)
    search = browser.current_url
    _phone(browser)
    time.sleep(0.3)
    assert not _scrolls_sideways(browser)
    _screenshot(browser, "cbir-search-phone.png", tmp_path)
    browser.get(corel.url + "/?index=corel&label=beach&k=12&page=2")
    _wait(browser).until(lambda b: "13–24 of 100" in _status(b))
    _settled(browser)
    assert not _scrolls_sideways(browser)
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # the pager, at the foot
    _screenshot(browser, "cbir-browse-phone.png", tmp_path)
    assert "more=" in search and _severe(browser) == []
