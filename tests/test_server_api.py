"""The HTTP API in process (FastAPI's TestClient): every endpoint, and every bad input as a 4xx JSON error."""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cbir.cli import app as cli_app  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.server import Limits, create_app  # noqa: E402
from conftest import coloured_image, write_image  # noqa: E402


@pytest.fixture
def served(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    app = create_app(index_dir, refresh_interval=0.1, limits=Limits(max_upload_bytes=2 * 2**20))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def upload(client, data: bytes, name="q.jpg", k=None, params=None, index="photos"):
    form = {} if k is None else {"k": str(k)}
    return client.post(f"/api/indexes/{index}/search", files={"file": (name, data, "image/jpeg")}, data=form, params=params)


def by_id(client, body, index="photos", **kwargs):
    return client.post(f"/api/indexes/{index}/search", json=body, **kwargs)


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def png_bomb(width: int, height: int) -> bytes:
    """A real PNG, grey, all zeros: a few hundred KB that decode to width x height bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    raw = zlib.compress(b"\x00" * ((width + 1) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


# -- endpoints -------------------------------------------------------------------
def test_health_and_index_list(served):
    assert served.get("/api/health").json() == {"status": "ok", "version": "0.1.0", "indexes": ["photos"]}
    (index,) = served.get("/api/indexes").json()["indexes"]
    assert (index["name"], index["size"], index["images"], index["dim"]) == ("photos", 15, 15, 1440)
    assert index["extractor"].startswith("color(") and index["embedder"]["extractor"]["name"] == "color"


def test_upload_search_finds_the_image_first_with_ids_and_urls(served, collection):
    query = collection / "green" / "green-1.jpg"
    response = upload(served, query.read_bytes(), name="green-1.jpg", k=4)
    assert response.status_code == 200
    body = response.json()
    assert body["index"] == "photos" and body["query"] == "green-1.jpg" and body["k"] == 4
    first = body["results"][0]
    # Default re-ranking (DBA + query expansion) moves the self-match's score slightly below 1.0.
    assert first["path"] == str(query) and first["score"] == pytest.approx(1.0, abs=1e-2) and first["rank"] == 1
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    assert first["image_url"] == f"/api/indexes/photos/images/{first['id']}"
    assert first["thumbnail_url"] == f"/api/indexes/photos/thumbnails/{first['id']}"
    # The same result objects as `cbir query --json`, plus id and URLs.
    cli = CliRunner().invoke(cli_app, ["query", str(query), "--name", "photos", "--index-dir", str(collection.parent / "indexes"), "-k", "4", "--json"])
    expected = __import__("json").loads(cli.stdout)["results"]
    assert [{k: r[k] for k in expected[0]} for r in body["results"]] == expected


def test_k_from_form_query_parameter_and_default(served, collection):
    data = (collection / "red" / "red-0.jpg").read_bytes()
    assert len(upload(served, data).json()["results"]) == 10
    assert len(upload(served, data, params={"k": 3}).json()["results"]) == 3
    assert len(upload(served, data, k=2, params={"k": 7}).json()["results"]) == 2  # the form wins


def test_search_by_id_gives_more_like_this(served, collection):
    first = upload(served, (collection / "blue" / "blue-2.jpg").read_bytes(), k=3).json()["results"]
    third = first[2]
    body = by_id(served, {"id": third["id"], "k": 5}).json()
    assert body["query_id"] == third["id"] and body["query"] == third["path"]
    assert body["results"][0]["id"] == third["id"] and len(body["results"]) == 5
    assert len(by_id(served, {"id": third["id"]}, params={"k": 2}).json()["results"]) == 2


def test_k_larger_than_the_collection_returns_all_of_it(served, collection):
    body = upload(served, (collection / "red" / "red-0.jpg").read_bytes(), k=999).json()
    assert body["k"] == 15 and len(body["results"]) == 15


def test_original_and_thumbnail(served, collection):
    query = collection / "red" / "red-3.jpg"
    image_id = upload(served, query.read_bytes(), k=1).json()["results"][0]["id"]
    original = served.get(f"/api/indexes/photos/images/{image_id}")
    assert original.status_code == 200 and original.content == query.read_bytes()
    assert original.headers["content-type"] == "image/jpeg"
    thumbnail = served.get(f"/api/indexes/photos/thumbnails/{image_id}")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    decoded = cv2.imdecode(__import__("numpy").frombuffer(thumbnail.content, "uint8"), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (48, 64)  # small images are not enlarged
    assert served.get(f"/api/indexes/photos/thumbnails/{image_id}").content == thumbnail.content


def test_page_assets_and_openapi_are_served_locally(served):
    page = served.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: every asset is ours
    for asset in ("/static/app.js", "/static/app.css", "/static/favicon.svg"):
        assert served.get(asset).status_code == 200
    paths = served.get("/openapi.json").json()["paths"]
    assert {"/api/health", "/api/indexes", "/api/indexes/{name}/search", "/api/indexes/{name}/images/{image_id}"} <= set(paths)
    assert served.get("/docs").status_code == 200


def test_missing_original_file_is_a_404(served, collection):
    query = collection / "green" / "green-0.jpg"
    image_id = upload(served, query.read_bytes(), k=1).json()["results"][0]["id"]
    query.unlink()
    for kind in ("images", "thumbnails"):
        response = served.get(f"/api/indexes/photos/{kind}/{image_id}")
        assert response.status_code == 404 and "green-0.jpg" in response.json()["error"]


def image_id_of(client, path: Path) -> int:
    return upload(client, path.read_bytes(), k=1).json()["results"][0]["id"]


def test_a_file_put_in_an_indexed_photos_place_is_not_served(served, collection, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:$6$not-for-the-web\n")
    photo = collection / "red" / "red-3.jpg"
    image_id = image_id_of(served, photo)
    photo.unlink()
    photo.symlink_to(secret)
    for kind in ("images", "thumbnails"):
        response = served.get(f"/api/indexes/photos/{kind}/{image_id}")
        assert response.status_code == 404 and b"not-for-the-web" not in response.content, kind
        assert "red-3.jpg" in response.json()["error"]


def test_a_copy_outside_the_indexed_folders_is_not_served_even_with_the_same_stat(served, collection, tmp_path):
    photo = collection / "blue" / "blue-1.jpg"
    image_id = image_id_of(served, photo)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(photo.read_bytes())
    info = photo.stat()
    os.utime(outside, ns=(info.st_atime_ns, info.st_mtime_ns))
    photo.unlink()
    photo.symlink_to(outside)
    response = served.get(f"/api/indexes/photos/images/{image_id}")
    assert response.status_code == 404 and "outside the indexed folders" in response.json()["error"]


def test_a_changed_file_is_not_served_but_a_touched_one_is(served, collection):
    touched, changed = collection / "green" / "green-1.jpg", collection / "green" / "green-2.jpg"
    touched_id, changed_id = image_id_of(served, touched), image_id_of(served, changed)
    os.utime(touched, ns=(0, 1_000_000_000))  # same bytes, another time: still the indexed file
    changed.write_bytes((collection / "red" / "red-0.jpg").read_bytes())
    response = served.get(f"/api/indexes/photos/images/{touched_id}")
    assert response.status_code == 200 and response.content == touched.read_bytes()
    assert int(response.headers["content-length"]) == touched.stat().st_size
    for kind in ("images", "thumbnails"):
        response = served.get(f"/api/indexes/photos/{kind}/{changed_id}")
        assert response.status_code == 404 and "changed since it was indexed" in response.json()["error"], kind


def test_a_fifo_in_a_photos_place_is_refused_at_once(served, collection):
    photo = collection / "red" / "red-4.jpg"
    image_id = image_id_of(served, photo)
    photo.unlink()
    os.mkfifo(photo)
    response = served.get(f"/api/indexes/photos/images/{image_id}")  # would hang on open without O_NONBLOCK
    assert response.status_code == 404 and "no longer a regular file" in response.json()["error"]


def test_an_index_without_recorded_folders_serves_only_below_its_images_folders(collection, index_dir, tmp_path):
    index_folder(collection, "photos", index_dir)
    from cbir.store.directory import IndexStore

    with IndexStore.open(index_dir / "photos", writable=True) as store:
        assert store.indexed_roots() == [str(collection)]
        store.catalogue._db.execute("DELETE FROM meta WHERE key = 'indexed_roots'")  # as an index built before they were recorded
        assert store.indexed_roots() == [str(collection / c) for c in ("blue", "green", "red")]
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    with TestClient(create_app(index_dir, refresh_interval=0), raise_server_exceptions=False) as client:
        kept, replaced = collection / "red" / "red-0.jpg", collection / "red" / "red-1.jpg"
        kept_id, replaced_id = image_id_of(client, kept), image_id_of(client, replaced)
        replaced.unlink()
        replaced.symlink_to(secret)
        assert client.get(f"/api/indexes/photos/images/{kept_id}").content == kept.read_bytes()
        assert client.get(f"/api/indexes/photos/images/{replaced_id}").status_code == 404


# -- bad input -------------------------------------------------------------------
def bad_requests(client, collection):
    """Every bad request the issue lists, with the status each must get."""
    jpeg = (collection / "red" / "red-0.jpg").read_bytes()
    too_big = b"\xff\xd8\xff" + b"\x00" * (3 * 2**20)
    yield "not an image", upload(client, b"this is not an image\n", name="notes.txt"), 422
    yield "empty", upload(client, b""), 422
    yield "truncated", upload(client, jpeg[: len(jpeg) // 2]), 422
    yield "larger than the cap", upload(client, too_big), 413
    yield "declared larger than the cap", client.post(
        "/api/indexes/photos/search", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=x", "content-length": str(200 * 2**20)}
    ), 413
    yield "decompression bomb", upload(client, png_bomb(12_000, 12_000), name="bomb.png"), 422
    yield "unknown index", upload(client, jpeg, index="nope"), 404
    yield "unknown id", by_id(client, {"id": 987654}), 404
    yield "id not a number", by_id(client, {"id": "5"}), 422
    yield "id a boolean", by_id(client, {"id": True}), 422
    yield "id beyond 64 bits", by_id(client, {"id": 2**63}), 422
    yield "id far beyond 64 bits", by_id(client, {"id": 10**40, "k": 2**64}), 422
    yield "negative id beyond 64 bits", by_id(client, {"id": -(2**63) - 1}), 422
    yield "k beyond 64 bits (JSON)", by_id(client, {"id": 1, "k": 2**70}), 422
    deep = b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield "deeply nested JSON", client.post("/api/indexes/photos/search", content=deep, headers={"content-type": "application/json"}), 400
    yield "unknown JSON field", by_id(client, {"id": 1, "path": "/etc/passwd"}), 422
    yield "JSON not an object", by_id(client, [1, 2]), 422
    yield "malformed JSON", client.post("/api/indexes/photos/search", content=b'{"id": ', headers={"content-type": "application/json"}), 400
    yield "other content type", client.post("/api/indexes/photos/search", content=b"id=1", headers={"content-type": "text/plain"}), 415
    yield "no file field", client.post("/api/indexes/photos/search", data={"k": "3"}, files={"other": ("a.jpg", jpeg)}), 422
    yield "file field is text", client.post("/api/indexes/photos/search", data={"file": "a.jpg"}, files={"x": ("b", b"")}), 422
    yield "more files than examples allowed", client.post("/api/indexes/photos/search", files=[("file", (f"{n}.jpg", jpeg)) for n in range(33)]), 400
    yield "a negative upload only", client.post("/api/indexes/photos/search", files=[("negative_file", ("a.jpg", jpeg))]), 422
    yield "a bad example id", client.post("/api/indexes/photos/search", data={"positive": "x"}, files={"negative_file": ("a.jpg", jpeg)}), 422
    yield "a weight of zero", by_id(client, {"positive": [{"id": 1, "weight": 0}]}), 422
    yield "id and examples", by_id(client, {"id": 1, "positive": [1]}), 422
    yield "under not a string", by_id(client, {"id": 1, "under": 3}), 422
    for k in ("0", "-3", "abc", "1.5", "1e3", str(10**30), "1001"):
        yield f"k={k} (form)", upload(client, jpeg, k=k), 422
        yield f"k={k} (query)", upload(client, jpeg, params={"k": k}), 422
    yield "k not a number (JSON)", by_id(client, {"id": 1, "k": "ten"}), 422
    yield "k zero (JSON)", by_id(client, {"id": 1, "k": 0}), 422
    for kind in ("images", "thumbnails"):
        for bad in ("..", "%2e%2e", "%2E%2E%2Fmanifest.json", "%2Fetc%2Fpasswd", "%00", "1%00", "-1", "1.0", "0x10", "9" * 40):
            yield f"{kind} id {bad}", client.get(f"/api/indexes/photos/{kind}/{bad}"), None
        yield f"{kind} unknown id", client.get(f"/api/indexes/photos/{kind}/424242"), 404
        for name in ("..", "%2e%2e", "%00", "photos%00", ".hidden"):
            yield f"{kind} index {name}", client.get(f"/api/indexes/{name}/{kind}/1"), None
    yield "absolute path as index", client.get("/api/indexes//etc/passwd/images/1"), None


def test_every_bad_input_is_a_json_4xx_and_nothing_is_written(served, collection, index_dir):
    before = snapshot(index_dir)
    for what, response, status in bad_requests(served, collection):
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
        if status is not None:
            assert response.status_code == status, (what, response.text)
        assert isinstance(response.json()["error"], str) and response.json()["error"], what
        assert "Traceback" not in response.text, what
    assert snapshot(index_dir) == before
    # ...and the server keeps serving.
    assert upload(served, (collection / "red" / "red-1.jpg").read_bytes(), k=1).status_code == 200


def test_the_bomb_is_refused_from_its_header(served):
    error = upload(served, png_bomb(12_000, 12_000), name="bomb.png").json()["error"]
    assert "too large" in error and "12000x12000" in error and "bomb.png" in error


# -- concurrency and live updates --------------------------------------------------
def test_concurrent_searches_get_the_same_answers(served, collection):
    queries = sorted(collection.rglob("*.jpg"))
    expected = {q: [r["id"] for r in upload(served, q.read_bytes(), k=5).json()["results"]] for q in queries}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: (q, [r["id"] for r in upload(served, q.read_bytes(), k=5).json()["results"]]), queries * 3))
    assert all(ids == expected[q] for q, ids in got)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_an_index_updated_while_serving_is_picked_up(served, collection, index_dir):
    new = write_image(collection / "yellow" / "yellow-0.jpg", coloured_image((20, 220, 230), seed=9))
    statuses: list[int] = []
    stop = threading.Event()

    def hammer():
        data = (collection / "red" / "red-2.jpg").read_bytes()
        while not stop.is_set():
            statuses.append(upload(served, data, k=3).status_code)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        index_folder(collection, "photos", index_dir)  # rewrites the snapshot while requests run
        assert wait_for(lambda: served.get("/api/indexes").json()["indexes"][0]["size"] == 16)
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {200}
    assert upload(served, new.read_bytes(), k=1).json()["results"][0]["path"] == str(new)


def test_an_index_created_while_serving_is_added(served, collection, index_dir):
    index_folder(collection / "red", "reds", index_dir)
    assert wait_for(lambda: served.get("/api/health").json()["indexes"] == ["photos", "reds"])
    assert upload(served, (collection / "red" / "red-0.jpg").read_bytes(), index="reds", k=2).status_code == 200


def mapped_files_under(folder: Path) -> list[str]:
    """Files below ``folder`` this process has memory-mapped (Linux), deleted ones included."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    return [line.split(None, 5)[-1] for line in maps.read_text().splitlines() if str(folder) in line]


@pytest.fixture
def manual(collection, index_dir):
    """A client whose indexes are refreshed only when the test says so."""
    index_folder(collection, "photos", index_dir)
    with TestClient(create_app(index_dir, refresh_interval=0), raise_server_exceptions=False) as client:
        yield client, client.app.state.pool


def test_requests_in_flight_on_a_deleted_index_finish_or_get_a_404(manual, collection, index_dir, monkeypatch):
    from cbir.indexing.maintenance import delete_index
    from cbir.retrieval.search import Searcher

    client, pool = manual
    image_id = image_id_of(client, collection / "red" / "red-0.jpg")
    entered, release = threading.Semaphore(0), threading.Event()
    search_vectors = Searcher.search_vectors

    def held(self, vectors, k, **options):
        entered.release()
        release.wait(20)
        return search_vectors(self, vectors, k, **options)

    monkeypatch.setattr(Searcher, "search_vectors", held)
    jpeg = (collection / "blue" / "blue-0.jpg").read_bytes()
    with ThreadPoolExecutor(4) as threads:
        in_flight = [threads.submit(by_id, client, {"id": image_id, "k": 3}) for _ in range(2)]
        in_flight.append(threads.submit(upload, client, jpeg, "q.jpg", 3))  # one: uploads may share a search
        for _ in in_flight:
            assert entered.acquire(timeout=20)  # every request is inside a search
        delete_index("photos", index_dir)
        pool.refresh()
        assert client.get("/api/health").json()["indexes"] == []
        release.set()
        statuses = [future.result().status_code for future in in_flight]
    assert set(statuses) <= {200, 404, 503}, [f.result().text for f in in_flight]
    after = by_id(client, {"id": image_id})
    assert after.status_code == 404 and "photos" in after.json()["error"]


def test_a_deleted_or_replaced_snapshot_is_unmapped_at_once(manual, collection, index_dir):
    import gc

    from cbir.indexing.maintenance import delete_index

    client, pool = manual
    assert any("augmented-" in line for line in mapped_files_under(index_dir))  # DBA vectors are mapped
    gc.disable()  # what is released must not wait for a garbage collection
    try:
        write_image(collection / "yellow" / "yellow-0.jpg", coloured_image((20, 220, 230), seed=9))
        index_folder(collection, "photos", index_dir)  # a new snapshot replaces the old one
        pool.refresh()
        assert client.get("/api/indexes").json()["indexes"][0]["size"] == 16
        mapped = mapped_files_under(index_dir)
        assert mapped and not any("(deleted)" in line for line in mapped), mapped
        delete_index("photos", index_dir)
        pool.refresh()
        assert mapped_files_under(index_dir) == []
    finally:
        gc.enable()


def test_a_named_index_deleted_while_served_is_let_go_and_comes_back_when_rebuilt(collection, index_dir):
    from cbir.indexing.maintenance import delete_index

    index_folder(collection, "photos", index_dir)
    with TestClient(create_app(index_dir, ["photos"], refresh_interval=0), raise_server_exceptions=False) as client:
        pool = client.app.state.pool
        delete_index("photos", index_dir)
        pool.refresh()
        assert mapped_files_under(index_dir) == [] and client.get("/api/health").json()["indexes"] == []
        assert upload(client, (collection / "red" / "red-0.jpg").read_bytes()).status_code == 404
        index_folder(collection / "red", "photos", index_dir)
        pool.refresh()
        assert client.get("/api/indexes").json()["indexes"][0]["size"] == 5


# -- the command ---------------------------------------------------------------------
def test_serve_refuses_in_one_line(collection, index_dir, tmp_path):
    runner = CliRunner()
    index_folder(collection, "photos", index_dir)
    missing = runner.invoke(cli_app, ["serve", "--index-dir", str(index_dir), "--name", "nope"])
    assert missing.exit_code != 0 and missing.stderr.startswith("error: no index named 'nope'")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = runner.invoke(cli_app, ["serve", "--index-dir", str(index_dir), "--port", str(port)])
    assert busy.exit_code != 0 and busy.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    bad_token = runner.invoke(cli_app, ["serve", "--index-dir", str(index_dir), "--token", "a b"])
    assert bad_token.exit_code != 0 and bad_token.stderr.startswith("error: a token must be")
    both = runner.invoke(cli_app, ["serve", "--index-dir", str(index_dir), "--token", "abcdefgh12", "--no-token"])
    assert both.exit_code != 0 and both.stderr.startswith("error: give --token or --no-token")
    for result in (missing, busy, bad_token, both):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_serve_without_the_extra_names_it(collection, index_dir, monkeypatch):
    index_folder(collection, "photos", index_dir)
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = CliRunner().invoke(cli_app, ["serve", "--index-dir", str(index_dir)])
    assert result.exit_code != 0
    assert result.stderr.strip() == "error: cbir serve needs uvicorn, which is not installed: pip install 'cbir[serve]'"
