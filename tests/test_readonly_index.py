"""An index in a folder this process cannot write stays queryable (issue 12, item 3).

Tests usually run as root, and root writes through any file mode, so ``chmod``
alone proves nothing. Two tests close that gap: one mounts the index folder
read-only (a bind mount in a private user and mount namespace, where even root
gets EROFS) and runs the real CLI in it; the other simulates the permission
check and proves the catalogue connection itself refuses writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path
from conftest import read_only_prefix

REPO = Path(__file__).resolve().parent.parent


def _run_all(prefix: list[str], commands: list[list[str]]) -> list[dict]:
    """Run each ``cbir`` command under ``prefix``; one process keeps the mount for all of them."""
    script = (
        "import json, subprocess, sys\n"
        "out = [subprocess.run([sys.executable, '-m', 'cbir', *c], capture_output=True, text=True) for c in json.loads(sys.argv[1])]\n"
        "print(json.dumps([{'rc': r.returncode, 'out': r.stdout, 'err': r.stderr} for r in out]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*prefix, sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_on_a_read_only_mounted_index(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (index_dir / "photos").iterdir())
    prefix = read_only_prefix(index_dir)
    common = ["--index-dir", str(index_dir)]
    query = str(collection / "red" / "red-2.jpg")
    try:
        q, info, evaluate, dups, remove = _run_all(
            prefix,
            [
                ["query", query, "--name", "photos", "-k", "3", "--json", *common],
                ["info", "photos", "--json", *common],
                ["evaluate", "--name", "photos", "--json", *common],
                ["duplicates", "--name", "photos", "--json", *common],
                ["remove", query, "--name", "photos", *common],
            ],
        )
    finally:
        if not prefix:
            index_dir.chmod(0o755)
    assert q["rc"] == 0, q["err"]
    assert json.loads(q["out"])["results"][0]["path"] == query
    assert info["rc"] == 0 and json.loads(info["out"])["images"] == 15, info["err"]
    assert evaluate["rc"] == 0 and "map" in json.loads(evaluate["out"]), evaluate["err"]
    assert dups["rc"] == 0, dups["err"]
    assert remove["rc"] != 0
    assert remove["err"].startswith("error: index 'photos' is read-only here") and "Traceback" not in remove["err"]
    assert len(remove["err"].strip().splitlines()) == 1
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (index_dir / "photos").iterdir()) == before


def test_unwritable_folder_opens_the_catalogue_read_only(collection, index_dir, monkeypatch):
    index_folder(collection, "photos", index_dir)
    folder = index_dir / "photos"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode & os.W_OK and Path(p) == folder else real_access(p, mode))
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.query(collection / "green" / "green-0.jpg", k=2).results[0].path.endswith("green-0.jpg")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            searcher.store.catalogue.set_meta("x", "y")


def test_readers_cannot_write_the_catalogue(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    with IndexStore.open(index_path("photos", index_dir)) as store:
        assert store.catalogue.read_only
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.catalogue.set_meta("x", "y")
