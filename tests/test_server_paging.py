"""The API behind the page (issue 25): browsing without a query, paging through results, the empty state, and
index descriptions without server paths. In process; the page itself is tested in tests/test_page.py."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from cbir.indexing.run import index_folder  # noqa: E402
from cbir.server import create_app  # noqa: E402
from cbir.server.access import Access, without_weight_paths  # noqa: E402
from cbir.server.app import Limits  # noqa: E402
from conftest import make_collection  # noqa: E402


@pytest.fixture(params=[True, False], ids=["paths shown", "paths hidden"])
def served(request, tmp_path):
    root = tmp_path / "photos"
    make_collection(root / "2019", per_class=4)
    make_collection(root / "2020", per_class=4)
    index_folder(root, "photos", tmp_path / "indexes", labels={str(p): p.parent.name for p in root.rglob("*.jpg")})
    app = create_app(tmp_path / "indexes", access=Access(show_paths=request.param), limits=Limits(max_depth=20))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, root, request.param


def test_browse_lists_every_image_a_page_at_a_time_in_path_order(served):
    client, root, show_paths = served
    pages, offset = [], 0
    while True:
        body = client.get(f"/api/indexes/photos/images?offset={offset}&limit=5").json()
        assert body["total"] == 24 and body["offset"] == offset and body["limit"] == 5
        if not body["results"]:
            break
        pages.append(body["results"])
        offset += 5
    assert [len(p) for p in pages] == [5, 5, 5, 5, 4]
    listed = [r for page in pages for r in page]
    paths = [r["path"] for r in listed]
    assert paths == sorted(paths) and len(set(r["id"] for r in listed)) == 24  # each image once, folders together
    assert [r["rank"] for r in listed] == list(range(1, 25))
    first = listed[0]
    assert "score" not in first and {"id", "label", "folder", "size", "mtime", "exists", "image_url", "thumbnail_url"} <= set(first)
    assert first["path"].startswith(str(root)) == show_paths
    assert client.get(first["thumbnail_url"]).status_code == 200


def test_browse_takes_the_search_filters(served):
    client, root, _ = served
    body = client.get("/api/indexes/photos/images", params={"label": "red", "limit": 100}).json()
    assert body["total"] == 8 and {r["label"] for r in body["results"]} == {"red"}
    folder = next(f for f in client.get("/api/indexes/photos/facets").json()["folders"] if f.endswith("2020/blue"))
    under = client.get("/api/indexes/photos/images", params={"under": folder.rsplit("/", 1)[0]}).json()
    assert under["total"] == 12 and all("/2020/" in r["path"] for r in under["results"])
    both = client.get("/api/indexes/photos/images", params={"under": folder, "label": "blue"}).json()
    assert both["total"] == 4


def test_browse_refuses_bad_pages_in_one_sentence(served):
    client, _, _ = served
    for query, word in [("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("offset=x", "offset")]:
        reply = client.get(f"/api/indexes/photos/images?{query}")
        assert reply.status_code == 422 and reply.json()["error"].startswith(word), (query, reply.json())
    assert client.get("/api/indexes/nope/images").status_code == 404


def test_search_pages_on_with_offset(served):
    client, root, _ = served
    whole = client.post("/api/indexes/photos/search", json={"id": 1, "k": 12}).json()["results"]
    first = client.post("/api/indexes/photos/search", json={"id": 1, "k": 6}).json()
    second = client.post("/api/indexes/photos/search", json={"id": 1, "k": 6, "offset": 6}).json()
    assert first["offset"] == 0 and second["offset"] == 6 and second["matching"] == 24
    assert [r["id"] for r in first["results"] + second["results"]] == [r["id"] for r in whole]
    assert [r["rank"] for r in second["results"]] == list(range(7, 13))  # ranks of the whole answer
    jpeg = (root / "2019" / "red" / "red-0.jpg").read_bytes()
    form = client.post("/api/indexes/photos/search?offset=3", files={"file": ("q.jpg", jpeg)}, data={"k": "3"}).json()
    plain = client.post("/api/indexes/photos/search", files={"file": ("q.jpg", jpeg)}, data={"k": "6"}).json()
    assert [r["id"] for r in form["results"]] == [r["id"] for r in plain["results"][3:]]
    last = client.post("/api/indexes/photos/search", json={"id": 1, "k": 5, "offset": 10, "label": "red"}).json()
    assert last["results"] == [] and last["matching"] == 8 and last["k"] == 0  # past the end: empty, not an error


def test_search_limits_are_errors_not_a_silent_clamp(served):
    client, _, _ = served
    too_many = client.post("/api/indexes/photos/search", json={"id": 1, "k": 1001})
    assert too_many.status_code == 422 and "1 to 1000" in too_many.json()["error"] and "offset" in too_many.json()["error"]
    too_deep = client.post("/api/indexes/photos/search", json={"id": 1, "k": 10, "offset": 15})  # max_depth=20 here
    assert too_deep.status_code == 422 and "20 results deep" in too_deep.json()["error"]
    bad = client.post("/api/indexes/photos/search", json={"id": 1, "offset": "3"})
    assert bad.status_code == 422 and "'offset' must be a whole number" in bad.json()["error"]
    schema = client.get("/openapi.json").json()["paths"]["/api/indexes/{name}/search"]["post"]["parameters"]
    assert {p["name"]: p["schema"].get("maximum") for p in schema}["k"] == 1000


def test_an_empty_index_folder_is_served_and_a_new_index_picked_up(collection, tmp_path):
    index_dir = tmp_path / "not-yet"  # not even created yet
    with TestClient(create_app(index_dir, refresh_interval=0), raise_server_exceptions=False) as client:
        body = client.get("/api/indexes").json()
        assert body["indexes"] == [] and body["build"].startswith("cbir index FOLDER --name NAME --index-dir ")
        assert client.get("/").status_code == 200
        index_folder(collection, "first", index_dir)
        client.app.state.pool.refresh()  # what the refresher thread does every second
        assert [i["name"] for i in client.get("/api/indexes").json()["indexes"]] == ["first"]
        assert client.get("/api/indexes/first/images").json()["total"] == 15


def test_the_build_command_names_the_served_folder_unless_it_is_the_default(tmp_path):
    """The line ``cbir serve`` prints on an empty folder: its command must build where this server looks."""
    from cbir.server.app import build_command
    from cbir.store.locations import default_index_dir

    assert build_command(tmp_path / "idx") == f"cbir index FOLDER --name NAME --index-dir {tmp_path / 'idx'}"
    assert build_command(default_index_dir()) == "cbir index FOLDER --name NAME"
    assert build_command(tmp_path / "idx", show_paths=False) == "cbir index FOLDER --name NAME"


def test_index_descriptions_name_weights_by_file_and_say_in_short_what_extracts(served):
    client, _, _ = served
    described = client.get("/api/indexes").json()["indexes"][0]
    assert described["summary"] == "color"
    cnn = {
        "extractor": "cnn(backbone=resnet50, weights=/srv/models/tuned.weights.h5, pooling=gem)",
        "embedder": {"extractor": {"name": "cnn", "params": {"backbone": "resnet50", "weights": "/srv/models/tuned.weights.h5", "pooling": "gem"}}, "pca": {"n_components": 128}},
    }
    shown = without_weight_paths(cnn)
    assert "/srv" not in repr(shown)
    assert shown["summary"] == "cnn resnet50 (gem), weights tuned.weights.h5 + PCA128"
    assert "weights=tuned.weights.h5" in shown["extractor"]
