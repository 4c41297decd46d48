"""What a trial as a user and an attacker found (issue 23's "fresh trial"), each pinned by a test."""

from __future__ import annotations

import os
import shutil
import sqlite3


import pytest

from cbir.display import display_path
from cbir.errors import IndexCorruptError
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.catalogue import Catalogue

from conftest import make_collection


def test_a_name_with_a_backslash_never_shows_like_a_byte_that_is_not_utf8():
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    literal = "caf\\xe9.jpg"
    assert display_path(latin1) != display_path(literal)
    assert display_path("new\nline.jpg") != display_path("new\\nline.jpg")
    assert display_path("plain.jpg") == "plain.jpg"


def test_a_dba_index_whose_faiss_file_is_gone_answers_as_before(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=6)
    index_folder(root, "p", tmp_path)  # DBA on by default
    probe = sorted(root.rglob("*.jpg"))[3]
    with Searcher.open("p", tmp_path) as searcher:
        before = [(m.path, round(m.score, 5)) for m in searcher.query(probe, k=10).results]
    for snapshot in (tmp_path / "p").glob("vectors-*.faiss"):
        snapshot.unlink()
    with Searcher.open("p", tmp_path) as searcher:
        after = [(m.path, round(m.score, 5)) for m in searcher.query(probe, k=10).results]
    assert after == before


def test_a_copy_without_its_wal_file_says_so(tmp_path):
    path = tmp_path / "catalogue.sqlite"
    sqlite3.connect(path).close()  # what the main file is before the first checkpoint: no tables
    with pytest.raises(IndexCorruptError, match="-wal file"):
        Catalogue(path, read_only=True)


def test_a_server_on_another_loopback_address_answers_to_it():
    from cbir.server.access import allowed_hosts_for

    assert "127.0.0.2:8766" in allowed_hosts_for("127.0.0.2", 8766)
    assert "127.0.0.1:8766" in allowed_hosts_for("127.0.0.2", 8766)
    assert "127.0.0.2:8766" not in allowed_hosts_for("127.0.0.1", 8766)


def test_the_index_listing_carries_a_removed_name_that_is_not_utf8(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cbir.indexing.run import remove_paths
    from cbir.server.app import create_app

    root = tmp_path / "photos"
    make_collection(root, per_class=3)
    odd = os.fsdecode(os.fsencode(str(root / "red")) + b"/caf\xe9.jpg")
    shutil.copy(sorted((root / "red").glob("*.jpg"))[0], os.fsencode(odd))
    index_folder(root, "p", tmp_path / "idx")
    remove_paths([odd], "p", tmp_path / "idx")
    with TestClient(create_app(tmp_path / "idx")) as client:
        answer = client.get("/api/indexes")
    assert answer.status_code == 200
    assert any("caf\\xe9.jpg" in path for path in answer.json()["indexes"][0]["removed_paths"])
