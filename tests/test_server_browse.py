"""The API's filters, several examples and result fields (issue 25), in process."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from cbir.indexing.run import index_folder  # noqa: E402
from cbir.server import create_app  # noqa: E402
from cbir.server.access import Access  # noqa: E402
from conftest import make_collection  # noqa: E402


@pytest.fixture(params=[True, False], ids=["paths shown", "paths hidden"])
def served(request, tmp_path):
    root = tmp_path / "photos"
    make_collection(root / "2019", per_class=4)
    make_collection(root / "2020", per_class=4)
    index_folder(root, "photos", tmp_path / "indexes", labels={str(p): p.parent.name for p in root.rglob("*.jpg")})
    app = create_app(tmp_path / "indexes", access=Access(show_paths=request.param))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, root, request.param


def _ids(client):
    return {r["path"].rsplit("photos/", 1)[-1]: r["id"] for r in client.post("/api/indexes/photos/search", json={"id": 1, "k": 100}).json()["results"]}


def test_facets_list_labels_and_folders_as_results_show_them(served):
    client, root, show_paths = served
    facets = client.get("/api/indexes/photos/facets").json()
    assert facets["labels"] == [{"label": name, "count": 8} for name in ("blue", "green", "red")]
    folders = facets["folders"]
    assert len(folders) == 6 and all(f.endswith(("red", "green", "blue")) for f in folders)
    assert all(f.startswith(str(root)) == show_paths for f in folders)


def test_filters_in_json_form_and_query_string(served):
    client, root, show_paths = served
    folder = next(f for f in client.get("/api/indexes/photos/facets").json()["folders"] if f.endswith("2020/red"))
    body = client.post("/api/indexes/photos/search", json={"id": 1, "k": 10, "under": folder.rsplit("/", 1)[0]}).json()
    assert body["k"] == 10 and body["matching"] == 12 and all("/2020/" in r["path"] for r in body["results"])
    assert all(r["folder"].startswith(folder.rsplit("/", 1)[0]) for r in body["results"])
    jpeg = (root / "2019" / "red" / "red-0.jpg").read_bytes()
    form = client.post("/api/indexes/photos/search", files={"file": ("q.jpg", jpeg)}, data={"label": "green", "k": "20"}).json()
    assert form["k"] == 8 and len(form["results"]) == 8 and {r["label"] for r in form["results"]} == {"green"}
    by_query = client.post("/api/indexes/photos/search?label=blue&k=3", json={"id": 1}).json()
    assert [r["label"] for r in by_query["results"]] == ["blue"] * 3
    none = client.post("/api/indexes/photos/search", json={"id": 1, "label": "purple"}).json()
    assert none["results"] == [] and none["matching"] == 0


def test_results_carry_label_folder_size_and_mtime(served):
    client, root, _ = served
    result = client.post("/api/indexes/photos/search", json={"id": 1, "k": 1}).json()["results"][0]
    assert {"label", "folder", "size", "mtime", "path", "id", "score"} <= set(result)
    assert result["size"] > 0 and result["mtime"].endswith("Z") and result["path"].startswith(result["folder"] + "/")


def test_several_examples_by_upload_and_id_to_find_and_avoid(served):
    client, root, _ = served
    ids = _ids(client)
    red, green = ids["2019/red/red-0.jpg"], ids["2019/green/green-0.jpg"]
    body = client.post("/api/indexes/photos/search", json={"positive": [red, {"id": ids["2020/red/red-1.jpg"], "weight": 2}], "k": 5}).json()
    assert body["positive"] == [red, ids["2020/red/red-1.jpg"]] and len(body["results"]) == 5
    assert red not in [r["id"] for r in body["results"]]  # the examples themselves are left out
    assert {r["label"] for r in body["results"]} == {"red"}
    jpeg = (root / "2019" / "green" / "green-1.jpg").read_bytes()
    files = [("file", ("a.jpg", jpeg)), ("negative_file", ("b.jpg", (root / "2019" / "red" / "red-1.jpg").read_bytes()))]
    mixed = client.post("/api/indexes/photos/search", files=files, data={"positive": f"{green}:1", "negative": str(red), "k": "4"}).json()
    assert mixed["negative"] == [red] and [r["label"] for r in mixed["results"]] == ["green"] * 4
    assert client.post("/api/indexes/photos/search", json={"positive": [987654]}).status_code == 404
