"""Who the server answers: the Host it is bound to (DNS rebinding), its token, and what paths it shows."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from cbir.errors import UsageError  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.server import Access, create_app  # noqa: E402
from cbir.server.access import allowed_hosts_for, check_token, is_loopback  # noqa: E402

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def indexed(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    return index_dir


def client_for(index_dir, base_url="http://testserver", **access) -> TestClient:
    return TestClient(create_app(index_dir, refresh_interval=0, access=Access(**access)), base_url=base_url, raise_server_exceptions=False)


def test_loopback_answers_only_its_own_names_with_the_port(indexed):
    hosts = allowed_hosts_for("127.0.0.1", 8000)
    assert set(hosts) == {"localhost:8000", "127.0.0.1:8000", "[::1]:8000"}
    with client_for(indexed, "http://127.0.0.1:8000", allowed_hosts=hosts) as client:
        assert client.get("/api/indexes").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "LOCALHOST:8000"):
            assert client.get("/api/health", headers={"host": host}).status_code == 200, host
        for host in ("attacker.example:8000", "attacker.example", "localhost:8001", "localhost", "127.0.0.1.attacker.example:8000", ""):
            response = client.get("/api/indexes", headers={"host": host})
            assert response.status_code == 400 and "does not answer to the host" in response.json()["error"], host
        assert client.get("/", headers={"host": "attacker.example:8000"}).status_code == 400  # the page too


def test_other_binds_and_extra_names():
    assert allowed_hosts_for("0.0.0.0", 8000) is None  # names the server cannot know: the token guards it
    assert allowed_hosts_for("0.0.0.0", 8000, ["photos.example.org"]) == ("photos.example.org",)
    assert allowed_hosts_for("192.168.1.5", 80) == ("192.168.1.5:80", "192.168.1.5")
    assert allowed_hosts_for("::1", 8000, ["Proxy:443"])[-1] == "proxy:443"
    with pytest.raises(UsageError, match="--allowed-host"):
        allowed_hosts_for("127.0.0.1", 8000, ["evil.example/path"])
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_an_entry_without_a_port_allows_any_port(indexed):
    with client_for(indexed, allowed_hosts=("photos.example.org",)) as client:
        assert client.get("/api/health", headers={"host": "photos.example.org:443"}).status_code == 200
        assert client.get("/api/health", headers={"host": "photos.example.org"}).status_code == 200
        assert client.get("/api/health", headers={"host": "other.example.org"}).status_code == 400


def test_a_token_is_needed_for_everything_but_the_page(indexed, collection):
    with client_for(indexed, token=TOKEN) as client:
        for path in ("/api/health", "/api/indexes", "/api/indexes/photos/images/1", "/api/indexes/photos/thumbnails/1", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 401 and "needs its token" in response.json()["error"], path
            assert response.headers["www-authenticate"].startswith("Bearer")
        search = client.post("/api/indexes/photos/search", json={"id": 1})
        assert search.status_code == 401
        wrong = client.get("/api/indexes", headers={"authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401 and "a wrong token" in wrong.json()["error"]
        assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
        for headers in ({"authorization": f"Bearer {TOKEN}"}, {"x-cbir-token": TOKEN}, {"cookie": f"cbir_token={TOKEN}"}):
            assert client.get("/api/indexes", headers=headers).status_code == 200, headers
            assert client.get("/api/indexes/photos/images/1", headers=headers).status_code == 200, headers


def test_opening_the_printed_address_keeps_the_token_as_a_cookie(indexed):
    with client_for(indexed, token=TOKEN) as client:
        assert client.get("/?token=wrong-token-value", follow_redirects=False).status_code == 200  # the page, which asks
        assert "cbir_token" not in client.cookies
        redirect = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert redirect.status_code == 303 and redirect.headers["location"] == "/"
        cookie = redirect.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/api/indexes").status_code == 200  # the cookie now goes with every request
        assert client.get("/api/indexes/photos/thumbnails/1").status_code == 200


def test_token_spelling():
    assert check_token(TOKEN) == TOKEN
    for bad in ("short", "has space inside it", "semi;colon-token", "x" * 300):
        with pytest.raises(UsageError, match="a token must be"):
            check_token(bad)


# -- paths ----------------------------------------------------------------------------
def test_a_server_for_others_shows_no_absolute_path(indexed, collection, tmp_path):
    from test_server_api import upload

    query = collection / "red" / "red-0.jpg"
    with client_for(indexed, show_paths=False) as client:
        listing = client.get("/api/indexes")
        assert listing.status_code == 200 and str(tmp_path) not in listing.text
        assert "path" not in listing.json()["indexes"][0]
        found = upload(client, query.read_bytes(), k=3).json()
        assert found["results"][0]["path"] == "photos/red/red-0.jpg"
        assert all(not r["path"].startswith("/") for r in found["results"])
        by_id = client.post("/api/indexes/photos/search", json={"id": found["results"][0]["id"], "k": 2}).json()
        assert by_id["query"] == "photos/red/red-0.jpg" and str(tmp_path) not in str(by_id)
        query.unlink()
        for kind in ("images", "thumbnails"):
            error = client.get(f"/api/indexes/photos/{kind}/{found['results'][0]['id']}").json()["error"]
            assert "photos/red/red-0.jpg" in error and str(tmp_path) not in error, error
    with client_for(indexed) as client:  # loopback (the default): the whole paths, as the CLI prints them
        assert client.get("/api/indexes").json()["indexes"][0]["path"] == str(indexed / "photos")


def test_the_weights_file_is_named_without_its_folder():
    from cbir.server.access import public_description, public_text

    weights = "/home/someone/models/mobilenet_1_0_224.weights.h5"
    described = {
        "name": "photos",
        "path": "/srv/indexes/photos",
        "extractor": f"cnn(backbone=mobilenet, weights={weights}, pooling=gem)",
        "embedder": {"extractor": {"name": "cnn", "params": {"weights": weights, "backbone": "mobilenet"}}, "pca": None},
        "removed_paths": ["/data/photos/private"],
    }
    shown = public_description(described, ["/data/photos"])
    assert "/home/someone" not in str(shown) and "/srv" not in str(shown)
    assert shown["embedder"]["extractor"]["params"]["weights"] == "mobilenet_1_0_224.weights.h5"
    assert shown["extractor"] == "cnn(backbone=mobilenet, weights=mobilenet_1_0_224.weights.h5, pooling=gem)"
    assert shown["removed_paths"] == ["photos/private"]
    assert public_text("catalogue /srv/indexes/a/catalogue.sqlite is unreadable") == "catalogue catalogue.sqlite is unreadable"
