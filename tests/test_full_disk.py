"""A full disk at every write of an indexing run (issue 23, item 4 and its harness).

Like SQLite's I/O-error tests: a clean run is counted write by write (every
atomic file: manifest, model, FAISS and ``.npy`` files, through their fsync;
every SQLite statement that writes), then for each N the N-th write fails as
a full disk does (``ENOSPC``; SQLite's "database or disk is full"), and each
time: one ``error:`` line and no traceback, the index (if one was left) opens
and answers, and a re-run gives exactly the clean build's results.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3

import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.store import catalogue as catalogue_module
from conftest import coloured_image, make_collection, write_image

runner = CliRunner()
_SQL_WRITES = ("INSERT", "UPDATE", "DELETE", "COMMIT", "CREATE", "BEGIN IMMEDIATE", "PRAGMA USER_VERSION =")


class FullDisk:
    """Counts writes; the ``fail_at``-th one (from 1) fails as on a full disk, and every later one too."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.writes = 0

    def write(self, sql: bool) -> None:
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            if sql:
                raise sqlite3.OperationalError("database or disk is full")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskConnection:
    """A sqlite3 connection whose writing statements go through :class:`FullDisk` first."""

    def __init__(self, db: sqlite3.Connection, disk: FullDisk):
        self._db, self._disk = db, disk

    def _check(self, sql: str) -> None:
        if sql.lstrip().upper().startswith(_SQL_WRITES) or "PRAGMA USER_VERSION =" in sql.upper():
            self._disk.write(sql=True)

    def execute(self, sql, *args):
        self._check(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql, *args):
        self._check(sql)
        return self._db.executemany(sql, *args)

    def executescript(self, sql):
        self._check(sql)
        return self._db.executescript(sql)

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.fixture
def full_disk(monkeypatch):
    """Install a :class:`FullDisk` (set ``fail_at`` on it) under every write cbir makes."""
    disk = FullDisk()
    real_init = catalogue_module.Catalogue.__init__

    def fsync(fd):
        # Only regular files: atomic_path fsyncs every file before its rename (a folder's fsync may fail quietly).
        if os.path.isfile(f"/proc/self/fd/{fd}") or not os.path.exists("/proc/self/fd"):
            disk.write(sql=False)
        return None  # durability is not what is tested here, and real fsyncs cost seconds

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if not self.read_only:
            self._db = _FullDiskConnection(self._db, disk)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(catalogue_module.Catalogue, "__init__", init)
    return disk


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def results(index_dir, photos) -> dict:
    """Every image's ranked neighbours as (path, rounded score): what a user sees of an index."""
    out = cli("query", photos, "--name", "p", "--index-dir", index_dir, "-k", "20", "--json")
    assert out.exit_code == 0, out.stderr
    return {r["query"]: [(m["path"], round(m["score"], 5)) for m in r["results"]] for r in json.loads(out.stdout)}


def check_one_error_line(result) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "no space left" in errors[0], result.stderr
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr


def add_images(photos, first: int) -> None:
    for n in range(first, first + 3):
        write_image(photos / "red" / f"extra-{n}.jpg", coloured_image((40, 40, 210), seed=500 + n))


@pytest.mark.parametrize("update", [False, True], ids=["first-build", "update"])
def test_every_failing_write_gives_one_error_line_and_a_rerun_repairs(tmp_path, full_disk, update):
    photos = tmp_path / "photos"
    make_collection(photos, per_class=3)

    def prepare(index_dir):
        if update:  # an index that exists, and new files to add to it
            full_disk.fail_at = None
            assert cli("index", photos, "--name", "p", "--index-dir", index_dir).exit_code == 0
            add_images(photos, 0)

    clean_dir = tmp_path / "clean"
    prepare(clean_dir)
    full_disk.writes = 0
    assert cli("index", photos, "--name", "p", "--index-dir", clean_dir).exit_code == 0
    total = full_disk.writes
    expected = results(clean_dir, photos)
    assert total > 10  # the harness sees the run's writes

    for n in range(1, total + 1):
        if update:
            for extra in photos.glob("red/extra-*"):
                extra.unlink()
        index_dir = tmp_path / f"run-{n}"
        prepare(index_dir)
        full_disk.fail_at, full_disk.writes = n, 0
        check_one_error_line(cli("index", photos, "--name", "p", "--index-dir", index_dir))
        full_disk.fail_at = None
        if (index_dir / "p" / "manifest.json").is_file():
            assert cli("info", "p", "--index-dir", index_dir).exit_code == 0, n  # the index opens
            results(index_dir, photos)  # and answers
        rerun = cli("index", photos, "--name", "p", "--index-dir", index_dir)
        assert rerun.exit_code == 0, (n, rerun.stderr)
        assert results(index_dir, photos) == expected, f"write {n} of {total}"
