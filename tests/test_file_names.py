"""File names that are not UTF-8, or hold a newline (issue 23, items 1 and 9): stored exactly, shown escaped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.display import display_path
from cbir.store.catalogue import Catalogue, NewImage
from conftest import coloured_image, make_collection

runner = CliRunner()
LATIN1 = b"caf\xe9.jpg"  # 'café.jpg' saved by an old Windows, zip or Samba archive
LATIN1_NAME = os.fsdecode(LATIN1)  # what os.listdir gives: 'caf\udce9.jpg'


def run(*args, expect=0):
    result = runner.invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def write_jpeg(path: bytes, bgr) -> None:
    # cv2.imwrite cannot take such a name (it crashes): encode in memory, write by bytes.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(cv2.imencode(".jpg", bgr)[1].tobytes())


@pytest.fixture
def odd_names(tmp_path) -> Path:
    """A small collection with a Latin-1 file name, a newline in a name and a folder whose name is not UTF-8."""
    root = tmp_path / "photos"
    make_collection(root, per_class=3)
    write_jpeg(os.fsencode(root / "red") + b"/" + LATIN1, coloured_image((40, 40, 210), seed=41))
    write_jpeg(os.fsencode(root / "red" / "new\nline.jpg"), coloured_image((40, 40, 210), seed=42))
    write_jpeg(os.fsencode(root) + b"/gr\xfcn/g.jpg", coloured_image((50, 180, 60), seed=43))
    return root


def test_display_path_escapes_undecodable_bytes_and_controls():
    assert display_path("/photos/a b.jpg") == "/photos/a b.jpg"
    assert display_path("/photos/" + LATIN1_NAME) == "/photos/caf\\xe9.jpg"
    assert display_path(b"/photos/" + LATIN1) == "/photos/caf\\xe9.jpg"
    assert display_path("new\nline\t\x1b.jpg") == "new\\nline\\t\\x1b.jpg"
    assert display_path("new\nline.jpg", controls=False) == "new\nline.jpg"  # JSON escapes it itself
    assert display_path("caf\u00e9 \U0001f600.jpg") == "caf\u00e9 \U0001f600.jpg"  # real Unicode is shown as it is


def _image(path: str, label: str | None = None) -> NewImage:
    return NewImage(path, 1, 2, "0" * 64, label, np.ones(4, np.float32))


def test_catalogue_keeps_names_that_are_not_utf8_exactly(tmp_path):
    latin = "/p/red/" + LATIN1_NAME
    in_odd_folder = os.fsdecode(b"/p/gr\xfcn/g.jpg")
    with Catalogue(tmp_path / "c.sqlite", create=True) as catalogue:
        with catalogue.transaction():
            catalogue.add_images([_image(latin, os.fsdecode(b"r\xf6t")), _image("/p/red/a.jpg"), _image(in_odd_folder)], 4)
            catalogue.add_images([_image("/p2/x.jpg")], 4)
            catalogue.set_skipped("/p/red/" + os.fsdecode(b"bad\xff.jpg"), 3, 4, "cannot decode " + os.fsdecode(b"bad\xff.jpg"))
        assert set(catalogue.images_under("/p")) == {latin, "/p/red/a.jpg", in_odd_folder}
        assert set(catalogue.images_under("/p/red")) == {latin, "/p/red/a.jpg"}
        assert set(catalogue.images_under(os.fsdecode(b"/p/gr\xfcn"))) == {in_odd_folder}
        assert catalogue.row_for_path(latin).label == os.fsdecode(b"r\xf6t")
        assert os.fsencode(catalogue.image_rows()[0].path) == b"/p/red/" + LATIN1
        skipped = catalogue.skipped_under("/p")
        assert list(skipped) == ["/p/red/" + os.fsdecode(b"bad\xff.jpg")]
        with catalogue.transaction():
            catalogue.add_images([_image(latin)], 4)  # the same name again replaces its row
            catalogue.remove_skipped(list(skipped))
        assert catalogue.count_images() == 4 and catalogue.count_skipped() == 0


def test_cli_indexes_queries_and_removes_names_that_are_not_utf8(odd_names, index_dir, tmp_path):
    run("index", odd_names, "--name", "odd", "--index-dir", index_dir)
    assert "12 unchanged" in run("index", odd_names, "--name", "odd", "--index-dir", index_dir).stdout  # updates work too
    query = odd_names / "red" / "red-0.jpg"
    text = run("query", query, "--name", "odd", "--index-dir", index_dir, "-k", "12").stdout
    lines = text.splitlines()
    assert len(lines) == 12  # one line per result: the newline in a name cannot split one
    assert any(line.endswith("/red/caf\\xe9.jpg") for line in lines)
    assert any(line.endswith("/red/new\\nline.jpg") for line in lines)
    data = json.loads(run("query", query, "--name", "odd", "--index-dir", index_dir, "-k", "12", "--json").stdout)
    paths = {m["path"] for m in data["results"]}
    assert str(odd_names / "red" / "caf\\xe9.jpg") in paths and str(odd_names / "red" / "new\nline.jpg") in paths
    exact = run("query", query, "--name", "odd", "--index-dir", index_dir, "-k", "12", "-0").stdout_bytes
    assert os.fsencode(odd_names / "red") + b"/" + LATIN1 + b"\0" in exact  # -0 gives the bytes xargs needs
    gallery = tmp_path / "g.html"
    run("query", odd_names / "red", "--name", "odd", "--index-dir", index_dir, "--html", gallery)
    assert "caf\\xe9.jpg" in gallery.read_text(encoding="utf-8")
    run("query", query, "--name", "odd", "--index-dir", index_dir, "--montage", tmp_path / "m.png")
    assert (tmp_path / "m.png").is_file()
    groups = run("duplicates", "--name", "odd", "--index-dir", index_dir, "--threshold", "0.9").stdout
    assert "/red/caf\\xe9.jpg\n" in groups and "/red/new\\nline.jpg\n" in groups
    latin_file = os.fsdecode(os.fsencode(odd_names / "red") + b"/" + LATIN1)
    assert "removed 1 image" in run("remove", latin_file, "--name", "odd", "--index-dir", index_dir).stdout
    again = runner.invoke(app, ["remove", latin_file, "--name", "odd", "--index-dir", str(index_dir)])
    assert again.exit_code != 0 and again.stderr.strip() == f"error: not in index 'odd': {display_path(latin_file)}"


def test_unreadable_file_with_such_a_name_is_listed_escaped(odd_names, index_dir):
    Path(os.fsdecode(os.fsencode(odd_names) + b"/bad\xff.jpg")).write_bytes(b"not an image")
    run("index", odd_names, "--name", "odd", "--index-dir", index_dir)
    out = run("info", "odd", "--index-dir", index_dir).stdout
    assert "skipped: " + str(odd_names) + "/bad\\xff.jpg: " in out
    data = json.loads(run("info", "odd", "--index-dir", index_dir, "--json").stdout)
    assert data["skipped_files"][0]["path"] == str(odd_names) + "/bad\\xff.jpg"


def test_server_json_carries_such_names_escaped(odd_names, index_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cbir.server import create_app

    run("index", odd_names, "--name", "odd", "--index-dir", index_dir)
    with TestClient(create_app(index_dir, refresh_interval=0.1), raise_server_exceptions=False) as client:
        data = (odd_names / "red" / "red-0.jpg").read_bytes()
        found = client.post("/api/indexes/odd/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": "12"})
        assert found.status_code == 200
        assert str(odd_names / "red" / "caf\\xe9.jpg") in {m["path"] for m in found.json()["results"]}
        latin = next(m for m in found.json()["results"] if m["path"].endswith("caf\\xe9.jpg"))
        assert client.get(f"/api/indexes/odd/images/{latin['id']}").content == Path(
            os.fsdecode(os.fsencode(odd_names / "red") + b"/" + LATIN1)
        ).read_bytes()
        os.unlink(os.fsencode(odd_names / "red") + b"/" + LATIN1)
        gone = client.get(f"/api/indexes/odd/images/{latin['id']}")
        assert gone.status_code == 404 and gone.json()["error"].endswith("caf\\xe9.jpg")
