"""Running the server: HEAD wherever GET is, Prometheus metrics, /docs without a CDN, stage timing."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from cbir.indexing.run import index_folder  # noqa: E402
from cbir.server import create_app  # noqa: E402
from cbir.timing import StageClock, measuring, stage  # noqa: E402


@pytest.fixture
def served(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    with TestClient(create_app(index_dir, refresh_interval=0.1), raise_server_exceptions=False) as client:
        yield client


def _image_id(served) -> int:
    return served.post("/api/indexes/photos/search", json={"positive": [1]}).json()["results"][0]["id"]


# -- HEAD ---------------------------------------------------------------------------
def test_head_answers_wherever_get_does_with_the_same_headers_and_no_body(served):
    image_id = _image_id(served)
    paths = [
        "/",
        "/api/health",
        "/api/indexes",
        "/api/indexes/photos/facets",
        "/api/indexes/photos/images?offset=0&limit=5",
        "/api/indexes/photos/duplicates",
        "/duplicates",
        f"/api/indexes/photos/images/{image_id}",
        f"/api/indexes/photos/thumbnails/{image_id}",
        "/static/app.js",
        "/openapi.json",
        "/docs",
        "/metrics",
    ]
    for path in paths:
        got, head = served.get(path), served.head(path)
        assert got.status_code == 200, path
        assert head.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if "content-length" in got.headers and path != "/metrics":  # the metrics count the GET just made
            assert head.headers["content-length"] == got.headers["content-length"], path
    assert served.head("/api/indexes/nope/facets").status_code == 404  # the GET's answer, headers only
    assert served.head("/api/indexes/photos/search").status_code == 405  # POST only: no GET, so no HEAD


# -- /metrics -----------------------------------------------------------------------
def _sample(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus' text format (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")])) if "{" in line else {}
            if all(found.get(key) == value for key, value in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_query_increments_the_request_counters_and_the_stage_histograms(served, collection):
    before = served.get("/metrics").text
    route = "/api/indexes/{name}/search"
    assert _sample(before, "cbir_http_requests_total", route=route, status="200") == 0
    data = (collection / "red" / "red-0.jpg").read_bytes()
    assert served.post("/api/indexes/photos/search", files={"file": ("q.jpg", data, "image/jpeg")}).status_code == 200
    assert served.post("/api/indexes/photos/search", files={"file": ("bad.jpg", b"not an image", "image/jpeg")}).status_code == 422
    after = served.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert _sample(text, "cbir_http_requests_total", method="POST", route=route, status="200") == 1
    assert _sample(text, "cbir_http_requests_total", method="POST", route=route, status="422") == 1
    assert _sample(text, "cbir_http_request_errors_total", route=route, status="422") == 1
    assert _sample(text, "cbir_http_request_errors_total", route=route, status="200") == 0
    assert _sample(text, "cbir_http_request_duration_seconds_count", route=route) == 2
    assert _sample(text, "cbir_searches_total", index="photos", kind="upload") == 1  # the bad upload never searched
    for name in ("decode", "embed", "search", "catalogue"):
        assert _sample(text, "cbir_search_stage_duration_seconds_count", index="photos", stage=name) == 1, name
        assert _sample(text, "cbir_search_stage_duration_seconds_sum", index="photos", stage=name) > 0, name
    # An index name or id is never a label of its own: the route's template is.
    served.get("/api/indexes/nope/facets")
    text = served.get("/metrics").text
    assert _sample(text, "cbir_http_requests_total", method="GET", route="/api/indexes/{name}/facets", status="404") == 1
    assert "nope" not in text


def test_searches_by_id_and_by_examples_report_their_kind_and_stages(served, collection):
    assert served.post("/api/indexes/photos/search", json={"id": 1}).status_code == 200
    data = [(collection / "red" / f"red-{n}.jpg").read_bytes() for n in range(3)]
    files = [("file", (f"q{n}.jpg", d, "image/jpeg")) for n, d in enumerate(data)]
    assert served.post("/api/indexes/photos/search", files=files).status_code == 200
    text = served.get("/metrics").text
    assert _sample(text, "cbir_searches_total", index="photos", kind="id") == 1
    assert _sample(text, "cbir_searches_total", index="photos", kind="examples") == 1
    # The id search decodes nothing: only the upload search observed a decode.
    assert _sample(text, "cbir_search_stage_duration_seconds_count", index="photos", stage="decode") == 1
    assert _sample(text, "cbir_search_stage_duration_seconds_count", index="photos", stage="search") == 2


def test_two_apps_keep_their_own_counters(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    with TestClient(create_app(index_dir)) as first, TestClient(create_app(index_dir)) as second:
        first.get("/api/health")
        assert _sample(first.get("/metrics").text, "cbir_http_requests_total", route="/api/health") == 1
        assert _sample(second.get("/metrics").text, "cbir_http_requests_total", route="/api/health") == 0


# -- /docs --------------------------------------------------------------------------
def test_docs_load_swagger_ui_from_this_server_only(served):
    page = served.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", page.text)
    urls = [a or b for a, b in urls]
    assert urls, page.text
    assert not re.search(r"https?://|//[a-z]", page.text, re.IGNORECASE), page.text  # no CDN, no other host
    scripts_and_styles = [u for u in urls if u.endswith((".js", ".css"))]
    assert len(scripts_and_styles) >= 2
    for url in urls:
        assert url.startswith("/"), url
        asset = served.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, url
    assert served.get("/redoc").status_code == 200 and "https://" not in served.get("/redoc").text


# -- cbir.timing ------------------------------------------------------------------------
def test_stages_are_measured_only_where_asked_and_per_context():
    with stage("decode"):  # nobody measuring: nothing happens
        pass
    with measuring() as outer:
        with stage("decode"):
            pass
        with measuring() as inner:
            with stage("embed"):
                pass
        with stage("decode"):
            pass
    assert set(outer.seconds) == {"decode"} and set(inner.seconds) == {"embed"}
    clock = StageClock()
    clock.merge({"search": 0.5})
    clock.merge({"search": 0.25, "catalogue": 0.1})
    assert clock.seconds == {"search": 0.75, "catalogue": 0.1}
