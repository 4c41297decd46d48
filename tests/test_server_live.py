"""A real ``cbir serve`` process on a free loopback port: abusive clients, a read-only index, a real browser."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from cbir.indexing.run import index_folder  # noqa: E402
from conftest import read_only_prefix  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COREL = Path(os.environ.get("CBIR_COREL", REPO.parent / "shared" / "datasets" / "corel1k"))


class Server:
    """``cbir serve --port 0`` in a subprocess; the address comes from its first line."""

    def __init__(self, index_dir: Path, prefix: list[str] = (), extra: list[str] = ()):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        command = [*prefix, sys.executable, "-m", "cbir", "serve", "--index-dir", str(index_dir), "--port", "0", *extra]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line)
                if "serving " in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(120)
        address = next((word for line in self.lines for word in line.split() if word.startswith("http://")), None)
        if address is None or self.process.poll() is not None:
            self.stop()
            raise AssertionError("cbir serve did not start: " + "".join(self.lines))
        address, _, self.login = address.partition("?")  # ?token=... when the server needs one
        self.url = address.rstrip("/")
        self.host, port = address[len("http://") :].rstrip("/").rsplit(":", 1)
        self.port = int(port)
        if self.host in ("0.0.0.0", "[::]"):  # every address: this machine's own will do
            self.host = "127.0.0.1"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def multipart(data: bytes, name: str = "q.jpg", k: int | None = None) -> tuple[bytes, dict]:
    boundary = "cbir-test-boundary"
    parts = []
    if k is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def read_reply(raw: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    reply = b""
    while chunk := raw.recv(65536):
        reply += chunk
    return reply


def search(server: Server, image: Path, k: int = 3, index: str = "photos"):
    body, headers = multipart(image.read_bytes(), image.name, k)
    status, raw = server.request("POST", f"/api/indexes/{index}/search", body, headers)
    return status, json.loads(raw)


@pytest.fixture
def server(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    started = Server(index_dir)
    yield started
    started.stop()


def test_server_survives_clients_that_abuse_the_connection(server, collection):
    query = collection / "red" / "red-1.jpg"
    host = b"Host: 127.0.0.1:%d\r\n" % server.port
    # A client that disconnects mid-upload.
    for _ in range(3):
        with socket.create_connection((server.host, server.port)) as raw:
            raw.sendall(
                b"POST /api/indexes/photos/search HTTP/1.1\r\n" + host + b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
                + b"\xff\xd8\xff" + b"\x00" * 5000
            )
    # 200 MB announced: refused at once, before the body is sent.
    with socket.create_connection((server.host, server.port), timeout=30) as raw:
        raw.sendall(
            b"POST /api/indexes/photos/search HTTP/1.1\r\n" + host + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {200 * 2**20}\r\n\r\n".encode()
        )
        reply = read_reply(raw)
    assert reply.startswith(b"HTTP/1.1 413") and b"upload limit" in reply
    # 200 MB streamed without a length: cut off once over the cap.
    refused = None
    with socket.create_connection((server.host, server.port), timeout=30) as raw:
        raw.sendall(
            b"POST /api/indexes/photos/search HTTP/1.1\r\n" + host + b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        preamble = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        raw.sendall(b"%x\r\n" % len(preamble) + preamble + b"\r\n")
        chunk = b"%x\r\n" % 2**20 + b"\x00" * 2**20 + b"\r\n"
        try:
            for _ in range(200):
                raw.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            refused = read_reply(raw)
        except ConnectionResetError:
            refused = b"reset"
    assert refused.startswith(b"HTTP/1.1 413") or refused == b"reset"
    # ...and it keeps serving.
    status, body = search(server, query)
    assert status == 200 and body["results"][0]["path"] == str(query)
    assert server.process.poll() is None
    assert "Traceback" not in "".join(server.lines)


def test_a_read_only_index_folder_is_served(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (index_dir / "photos").iterdir())
    prefix = read_only_prefix(index_dir)
    server = Server(index_dir, prefix)
    try:
        query = collection / "blue" / "blue-1.jpg"
        status, body = search(server, query)
        assert status == 200 and body["results"][0]["path"] == str(query)
        status, thumbnail = server.request("GET", body["results"][1]["thumbnail_url"])
        assert status == 200 and thumbnail.startswith(b"\xff\xd8")
    finally:
        server.stop()
        if not prefix:
            index_dir.chmod(0o755)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (index_dir / "photos").iterdir()) == before


# -- the page in a real browser ----------------------------------------------------
def _answered(browser, text: str) -> bool:
    """The status line names ``text`` and the search has answered (while it runs, the old grid is still shown)."""
    from selenium.webdriver.common.by import By

    status = browser.find_element(By.ID, "status").text
    return text in status and not status.endswith("…")


def _browser():
    """Headless Debian Chromium through its chromedriver, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def corel_server(tmp_path_factory):
    images = COREL / "images"
    if not images.is_dir():
        pytest.skip(f"Corel-1k is not at {COREL} (set CBIR_COREL)")
    index_dir = tmp_path_factory.mktemp("corel-indexes")
    index_folder(images, "corel", index_dir, labels=COREL / "labels.csv")
    server = Server(index_dir)
    yield server
    server.stop()


def test_browser_upload_then_more_like_this(corel_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = COREL / "images" / "305.jpg"
    browser = _browser()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(corel_server.url + "/")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#index option"))
        k_input = browser.find_element(By.ID, "k")
        k_input.clear()
        k_input.send_keys("8")
        browser.find_element(By.ID, "file").send_keys(str(query))
        # The grid is read in one script call: the page may re-render it (a
        # late "change" of k), and element handles would then go stale.
        wait.until(lambda b: len(_grid(b)) == 8 and _grid(b)[0]["name"] == query.name)
        first_grid = _grid(browser)
        # Default re-ranking (DBA + query expansion): the image itself scores just under 1.
        assert 0.99 <= float(first_grid[0]["score"]) <= 1.0
        assert first_grid[0]["href"].endswith(f"/images/{first_grid[0]['id']}")
        third = first_grid[2]

        browser.execute_script(
            "document.querySelector(`#results .result[data-id='${arguments[0]}'] button.more`).click()", third["id"]
        )
        wait.until(lambda b: (_grid(b) or [{}])[0].get("id") == third["id"] and len(_grid(b)) == 8)
        second_grid = [r["id"] for r in _grid(browser)]
        assert second_grid != [r["id"] for r in first_grid]
        assert browser.find_element(By.ID, "query-caption").text == third["name"]
        # Every thumbnail loaded (served by id, not by path).
        wait.until(lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        screenshot = tmp_path / "cbir-serve.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()


def _start_search(browser, server, query: Path, k: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#index option") and len(b.find_elements(By.CSS_SELECTOR, "#label option")) > 1)
    k_input = browser.find_element(By.ID, "k")
    k_input.clear()
    k_input.send_keys(str(k))
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(lambda b: len(_grid(b)) == k and _grid(b)[0]["name"] == query.name)
    return wait


def _labels_of(server, ids) -> list[str]:
    status, body = server.request("POST", "/api/indexes/corel/search", json.dumps({"id": int(ids[0]), "k": 1000}).encode(), {"Content-Type": "application/json"})
    label_of = {str(r["id"]): r["label"] for r in json.loads(body)["results"]}
    return [label_of[i] for i in ids]


def test_browser_more_like_this_and_less_like_this_refine(corel_server, tmp_path):
    from selenium.webdriver.common.by import By

    browser = _browser()
    try:
        query = COREL / "images" / "105.jpg"  # a beach: its colour neighbours mix classes
        wait = _start_search(browser, corel_server, query, 12)
        first = _grid(browser)
        labels = _labels_of(corel_server, [r["id"] for r in first])
        liked = first[1]
        click = "document.querySelector(`#results .result[data-id='${arguments[0]}'] button.${arguments[1]}`).click()"
        browser.execute_script(click, liked["id"], "like")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#more-list .chip") and _answered(b, "1 more"))
        wait.until(lambda b: liked["id"] not in [r["id"] for r in _grid(b)])  # an example is not its own result
        liked_grid = [r["id"] for r in _grid(browser)]
        liked_labels = _labels_of(corel_server, liked_grid)
        disliked = next((r for r, label in zip(_grid(browser)[1:], liked_labels[1:]) if label != labels[1]), _grid(browser)[-1])
        browser.execute_script(click, disliked["id"], "unlike")
        wait.until(lambda b: _answered(b, "1 less"))
        refined = [r["id"] for r in _grid(browser)]
        assert disliked["id"] not in refined and len(refined) == 12 and refined != liked_grid
        assert browser.find_element(By.ID, "refine").is_displayed()
        disliked_label = _labels_of(corel_server, [disliked["id"]])[0]
        if disliked_label != labels[1]:  # its class is pushed down
            assert _labels_of(corel_server, refined).count(disliked_label) <= _labels_of(corel_server, liked_grid).count(disliked_label)
        # Removing the chips brings the plain search back.
        for chip in ("#less-list .chip button", "#more-list .chip button"):
            browser.find_element(By.CSS_SELECTOR, chip).click()
        wait.until(lambda b: not b.find_element(By.ID, "refine").is_displayed() and [r["id"] for r in _grid(b)] == [r["id"] for r in first])
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()


def test_browser_filter_by_label_and_screenshots_at_desktop_and_phone_width(corel_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = _browser()
    try:
        wait = _start_search(browser, corel_server, COREL / "images" / "305.jpg", 12)
        Select(browser.find_element(By.ID, "label")).select_by_value("horses")
        wait.until(lambda b: len(_grid(b)) == 12 and set(_labels_of(corel_server, [r["id"] for r in _grid(b)])) == {"horses"})
        details = browser.execute_script("return [...document.querySelectorAll('#results .details')].map(d => d.textContent)")
        assert all(text.startswith("horses · ") and "images · " in text and " kB · " in text for text in details), details[:2]
        wait.until(lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        out = Path(os.environ.get("CBIR_SCREENSHOTS", tmp_path))
        browser.save_screenshot(str(out / "cbir-filter-desktop.png"))
        browser.set_window_size(390, 844)
        wait.until(lambda b: b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
        browser.save_screenshot(str(out / "cbir-filter-phone.png"))
    finally:
        browser.quit()


def test_browser_why_frames_the_region_each_result_matched_on(corel_server, tmp_path):
    from selenium.webdriver.common.by import By

    browser = _browser()
    try:
        wait = _start_search(browser, corel_server, COREL / "images" / "705.jpg", 8)
        assert browser.find_elements(By.CSS_SELECTOR, "#results .region") == []
        browser.find_element(By.ID, "explain").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .region")) == 8)
        wait.until(lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        # Each frame lies inside its thumbnail's square and is smaller than it.
        boxes = browser.execute_script(
            """return [...document.querySelectorAll('#results .result')].map(r => {
                const f = r.querySelector('.region').getBoundingClientRect(), i = r.querySelector('img').getBoundingClientRect();
                return [f.left - i.left, f.top - i.top, i.right - f.right, i.bottom - f.bottom, f.width * f.height / (i.width * i.height)];
            })"""
        )
        assert all(min(b[:4]) >= -4 and 0.02 < b[4] < 0.95 for b in boxes), boxes
        out = Path(os.environ.get("CBIR_SCREENSHOTS", tmp_path))
        browser.save_screenshot(str(out / "cbir-why-desktop.png"))
        browser.set_window_size(390, 844)
        wait.until(lambda b: b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
        browser.save_screenshot(str(out / "cbir-why-phone.png"))
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()


def _grid(browser) -> list[dict]:
    """The result grid as the page shows it: id, file name, score text and link of each tile."""
    return browser.execute_script(
        """return [...document.querySelectorAll('#results .result')].map(r => ({
            id: r.getAttribute('data-id'),
            name: r.querySelector('.name')?.textContent ?? '',
            score: r.querySelector('.score')?.textContent ?? '',
            href: r.querySelector('.open')?.getAttribute('href') ?? '',
        }))"""
    )


def test_upload_caps_come_from_the_command_line(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    server = Server(index_dir, extra=["--max-megapixels", "0.002", "--max-upload-mb", "0.05"])
    try:
        status, body = search(server, collection / "red" / "red-0.jpg")  # 64x48 = 3,072 pixels
        assert status == 422 and "too large" in body["error"] and "2,000" in body["error"]
        big, headers = multipart(b"\xff\xd8\xff" + b"\x00" * 60_000)
        status, raw = server.request("POST", "/api/indexes/photos/search", big, headers)
        assert status == 413 and "0.05 MB" in json.loads(raw)["error"]
    finally:
        server.stop()


def test_access_log_shows_each_request_on_stderr_and_hides_the_token(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    quiet = Server(index_dir)
    try:
        assert quiet.request("GET", "/api/health")[0] == 200
    finally:
        quiet.stop()
    assert not any("/api/health" in line for line in quiet.lines)  # off by default
    server = Server(index_dir, extra=["--access-log", "--token", "s3cret-token-1"])
    try:
        assert server.request("GET", "/api/health", headers={"X-CBIR-Token": "s3cret-token-1"})[0] == 200
        assert server.request("HEAD", "/api/indexes", headers={"X-CBIR-Token": "s3cret-token-1"})[0] == 200
        assert server.request("GET", "/api/indexes/nope/facets", headers={"X-CBIR-Token": "s3cret-token-1"})[0] == 404
        assert server.request("GET", "/?token=s3cret-token-1")[0] == 303
        status, _ = search(server, collection / "red" / "red-0.jpg")
        assert status == 401  # no token: refused, and logged too
    finally:
        server.stop()
    log = "".join(line for line in server.lines if "HTTP/1.1" in line)  # the access lines (the first line prints the token)
    assert '"GET /api/health HTTP/1.1" 200' in log
    assert '"HEAD /api/indexes HTTP/1.1" 200' in log
    assert '"GET /api/indexes/nope/facets HTTP/1.1" 404' in log
    assert '"POST /api/indexes/photos/search HTTP/1.1" 401' in log
    assert '"GET /?token=... HTTP/1.1" 303' in log and "s3cret-token-1" not in log


# -- limits of the HTTP server itself ------------------------------------------------
def test_late_headers_and_late_bodies_are_cut_off(collection, index_dir):
    import time

    index_folder(collection, "photos", index_dir)
    server = Server(index_dir, extra=["--header-timeout", "1", "--body-timeout", "1"])
    try:
        started = time.monotonic()
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            raw.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
            assert read_reply(raw) == b""  # closed without an answer...
        assert time.monotonic() - started < 5  # ...after about a second, not never
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            raw.sendall(
                b"POST /api/indexes/photos/search HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n" % server.port
            )
            reply = read_reply(raw)
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in reply
        assert search(server, collection / "red" / "red-1.jpg")[0] == 200  # and it keeps serving
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.lines)


def test_a_host_other_than_loopback_needs_a_token_and_gets_safe_limits(collection, index_dir):
    from test_server_api import png_bomb

    index_folder(collection, "photos", index_dir)
    server = Server(index_dir, extra=["--host", "0.0.0.0"])
    try:
        assert server.login.startswith("token=")
        token = server.login[len("token=") :]
        status, _ = server.request("GET", "/api/indexes")
        assert status == 401
        auth = {"Authorization": f"Bearer {token}"}
        status, raw = server.request("GET", "/api/indexes", headers=auth)
        assert status == 200
        # 20 megapixels: under the loopback cap (50), over the one for other machines (16).
        body, headers = multipart(png_bomb(5000, 4000), "big.png")
        status, raw = server.request("POST", "/api/indexes/photos/search", body, {**headers, **auth})
        assert status == 422 and "too large" in json.loads(raw)["error"]
    finally:
        server.stop()
    assert any("warning: listening on 0.0.0.0" in line for line in server.lines)


def test_loopback_refuses_other_host_names(server):
    status, raw = server.request("GET", "/api/indexes", headers={"Host": f"rebound.example:{server.port}"})
    assert status == 400 and "does not answer to the host" in json.loads(raw)["error"]
    assert server.request("GET", "/api/indexes", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_browser_asks_for_the_token_once(collection, index_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    index_folder(collection, "photos", index_dir)
    browser = _browser()
    server = Server(index_dir, extra=["--token", "token-for-the-page-test"])
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(server.url + "/")
        wait.until(lambda b: b.find_element(By.ID, "token-form").is_displayed())
        assert "needs its token" in browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(tmp_path / "token-asked.png"))
        browser.find_element(By.ID, "token").send_keys("token-for-the-page-test")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#index option"))
        assert "token" not in browser.current_url and browser.current_url.startswith(server.url + "/")  # not left in the address
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        browser.find_element(By.ID, "file").send_keys(str(collection / "red" / "red-0.jpg"))
        wait.until(lambda b: len(_grid(b)) >= 3)
        wait.until(lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        browser.get(server.url + "/")  # asked once: the cookie is kept
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#index option"))
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        assert browser.save_screenshot(str(tmp_path / "token-kept.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
        assert errors == []
    finally:
        browser.quit()
        server.stop()
