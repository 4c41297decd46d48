"""The files of an index folder: damaged augmented vectors, copies without -wal, edited manifests (issue 23, items 4-7)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.errors import disk_full_error
from cbir.store import dba
from cbir.store.directory import IndexStore
from conftest import coloured_image, write_image

runner = CliRunner()


def cli(*args, expect=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def neighbours(index_dir, photos):
    out = cli("query", photos, "--name", "p", "--index-dir", index_dir, "-k", "15", "--json")
    return {r["query"]: [(m["path"], round(m["score"], 5)) for m in r["results"]] for r in json.loads(out.stdout)}, out.stderr


@pytest.fixture
def built(collection, index_dir):
    cli("index", collection, "--name", "p", "--index-dir", index_dir)
    return index_dir / "p"


# -- 5. augmented vectors: verified like the FAISS snapshot, and repaired -----------------
@pytest.mark.parametrize("damage", ["missing", "truncated", "replaced"])
def test_damaged_augmented_vectors_are_reported_and_the_next_run_repairs_them(built, collection, index_dir, damage):
    expected, _ = neighbours(index_dir, collection)
    augmented = next(p for p in built.glob("augmented-*.npy") if p.name.count(".") == 1)
    if damage == "missing":
        augmented.unlink()
    elif damage == "truncated":
        augmented.write_bytes(augmented.read_bytes()[:-400])
    else:  # same size, other numbers: only a fingerprint tells
        data = bytearray(augmented.read_bytes())
        data[-64:] = bytes(64)
        augmented.write_bytes(bytes(data))
    _, warned = neighbours(index_dir, collection)
    assert "warning: " in warned and augmented.name in warned and "cbir index" in warned  # never silent
    repaired = cli("index", collection, "--name", "p", "--index-dir", index_dir)
    assert "recomputing them" in repaired.stderr
    after, quiet = neighbours(index_dir, collection)
    assert after == expected and "warning" not in quiet


# -- 4. a run that fails before its snapshot: queries say DBA is behind --------------------
def test_images_committed_after_the_snapshot_are_not_searched_without_dba_silently(built, collection, index_dir, monkeypatch):
    for n in range(3):
        write_image(collection / "red" / f"more-{n}.jpg", coloured_image((40, 40, 210), seed=900 + n))

    def full(*args, **kwargs):
        raise disk_full_error("the index")

    monkeypatch.setattr(dba, "save_snapshot", full)
    failed = runner.invoke(app, ["index", str(collection), "--name", "p", "--index-dir", str(index_dir)])
    assert failed.exit_code == 1 and failed.stderr.count("error: no space left") == 1
    monkeypatch.undo()
    _, warned = neighbours(index_dir, collection)
    assert "3 image(s) committed after its last vector snapshot are searched without DBA" in warned
    cli("index", collection, "--name", "p", "--index-dir", index_dir)
    _, quiet = neighbours(index_dir, collection)
    assert "warning" not in quiet


# -- 6. the catalogue file alone is complete once no writer runs -----------------------------
def test_a_copy_without_wal_is_complete_even_while_a_reader_holds_the_catalogue(built, collection, index_dir, tmp_path):
    reader = IndexStore.open(built)  # what cbir serve holds open
    try:
        for n in range(4):
            write_image(collection / "blue" / f"more-{n}.jpg", coloured_image((200, 90, 30), seed=800 + n))
        cli("index", collection, "--name", "p", "--index-dir", index_dir)
        assert reader.catalogue.count_images() == 19  # the open reader sees the new commit
        copy = tmp_path / "copy.sqlite"
        shutil.copyfile(built / "catalogue.sqlite", copy)  # the -wal file left behind
        with sqlite3.connect(copy) as db:
            assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 19
    finally:
        reader.close()


def test_after_a_run_the_catalogue_file_holds_everything_and_readers_still_see_new_commits(built, collection, index_dir):
    reader = IndexStore.open(built)
    try:
        write_image(collection / "red" / "late.jpg", coloured_image((40, 40, 210), seed=777))
        cli("index", collection, "--name", "p", "--index-dir", index_dir)
        assert reader.catalogue.count_images() == 16
        wal = built / "catalogue.sqlite-wal"
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed: nothing a copy could miss
    finally:
        reader.close()


# -- 7. an edited or damaged manifest ---------------------------------------------------------
@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda m: m.update(dim=m["dim"] + 1), "says dimension"),
        (lambda m: m["embedder"]["extractor"].update(name="colour"), "unknown extractor 'colour'"),
        (lambda m: m.update(dim="many"), "invalid dimension"),
        (lambda m: m.update(embedder=[]), "malformed extractor config"),
    ],
    ids=["dim", "extractor-name", "dim-type", "embedder-type"],
)
def test_a_damaged_manifest_is_refused_by_every_command_naming_the_file(built, collection, index_dir, edit, says):
    manifest_file = built / "manifest.json"
    original = manifest_file.read_text()
    manifest = json.loads(original)
    edit(manifest)
    manifest_file.write_text(json.dumps(manifest))
    for command in (
        ["index", collection, "--name", "p"],
        ["info", "p"],
        ["query", collection / "red" / "red-0.jpg", "--name", "p"],
    ):
        result = runner.invoke(app, [str(a) for a in command] + ["--index-dir", str(index_dir)])
        assert result.exit_code == 1, (command, result.stdout)
        message = result.stderr.strip()
        assert message.startswith("error: index 'p' is corrupt: ") and str(manifest_file) in message
        assert says in message and "catalogue" not in message and "cbir delete p --yes" in message
    manifest_file.write_text(original)  # restoring the file, as the message says, recovers
    cli("index", collection, "--name", "p", "--index-dir", index_dir)
