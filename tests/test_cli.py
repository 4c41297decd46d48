"""Every command through Typer's CliRunner: output contracts, and bad input as one clean error."""

import json
import os
import subprocess
import sys

import cv2
import pytest
import typer
from typer.testing import CliRunner

from cbir.cli import app
from conftest import add_broken_files

runner = CliRunner()


def run(*args, expect=0, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def fails(*args):
    """Run a command that must fail with one clear ``error:`` line and no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0, result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def indexed(collection, index_dir):
    run("index", collection, "--name", "photos", "--index-dir", index_dir)
    return collection


def test_index_prints_a_summary_and_json(collection, index_dir):
    result = run("index", collection, "--name", "photos", "--index-dir", index_dir)
    assert "created index 'photos'" in result.stdout and "15 added" in result.stdout
    data = json.loads(run("index", collection, "--name", "photos", "--index-dir", index_dir, "--json").stdout)
    assert data["created"] is False and data["unchanged"] == 15 and data["added"] == 0 and data["total"] == 15


def test_index_name_defaults_to_the_folder_name(collection, index_dir):
    run("index", collection, "--index-dir", index_dir)
    assert (index_dir / "photos" / "manifest.json").is_file()


def test_index_warns_once_per_skipped_file(collection, index_dir):
    add_broken_files(collection / "broken")
    result = run("index", collection, "--name", "photos", "--index-dir", index_dir)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 3
    assert "3 skipped" in result.stdout


def test_query_text_json_and_montage(indexed, index_dir, tmp_path):
    query = indexed / "red" / "red-1.jpg"
    text = run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "3").stdout.splitlines()
    assert len(text) == 3 and text[0].split()[0] == "1" and text[0].endswith(str(query))

    data = json.loads(run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "4", "--json").stdout)
    assert data["query"] == str(query)
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4]
    assert data["results"][0]["path"] == str(query)
    assert all(os.path.isabs(r["path"]) for r in data["results"])
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)

    montage = tmp_path / "grid.png"
    run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "5", "--montage", montage)
    grid = cv2.imread(str(montage))
    assert grid is not None and grid.shape[1] >= 6 * 100  # query + 5 results side by side


def test_query_folder_gives_one_result_list_per_image(indexed, index_dir, tmp_path):
    data = json.loads(run("query", indexed / "blue", "--name", "photos", "--index-dir", index_dir, "-k", "2", "--json").stdout)
    assert isinstance(data, list) and len(data) == 5
    assert all(entry["results"][0]["path"] == entry["query"] for entry in data)


def test_evaluate_json_contract(indexed, index_dir):
    data = json.loads(run("evaluate", "--name", "photos", "--index-dir", index_dir, "--json").stdout)
    assert set(data["precision"]) == set(data["recall"]) == {"1", "5", "10", "20", "50"}
    assert set(data["per_class"]) == {"red", "green", "blue"}
    assert data["precision"]["1"] == 1.0  # three well-separated colours
    assert 0.9 < data["map"] <= 1.0
    text = run("evaluate", "--name", "photos", "--index-dir", index_dir).stdout
    assert "mAP" in text and "red" in text


def test_evaluate_with_labels_csv(indexed, index_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    lines = ["filename,class_id,class_name"] + [
        f"photos/{p.parent.name}/{p.name},{i},{'warm' if p.parent.name == 'red' else 'cold'}"
        for i, p in enumerate(sorted(indexed.rglob("*.jpg")))
    ]
    csv.write_text("\n".join(lines) + "\n")
    data = json.loads(run("evaluate", "--name", "photos", "--index-dir", index_dir, "--labels", csv, "--json").stdout)
    assert set(data["per_class"]) == {"warm", "cold"}
    # Columns chosen by name: class_id gives one class per image, so nothing is relevant.
    error = fails("evaluate", "--name", "photos", "--index-dir", index_dir, "--labels", csv, "--label-column", "class_id")
    assert "no label has two images" in error
    assert "no column 'nope'" in fails("evaluate", "--name", "photos", "--index-dir", index_dir, "--labels", csv, "--path-column", "nope")


def test_info_and_list(indexed, index_dir):
    text = run("info", "photos", "--index-dir", index_dir).stdout
    assert "color(bins=[8, 12, 3]" in text and "images      15" in text
    data = json.loads(run("info", "photos", "--index-dir", index_dir, "--json").stdout)
    assert data["images"] == 15 and data["dim"] == 1440 and data["vectors_current"] is True
    listing = json.loads(run("list", "--index-dir", index_dir, "--json").stdout)
    assert [row["name"] for row in listing] == ["photos"]
    assert "photos" in run("list", "--index-dir", index_dir).stdout


def test_demo_runs_end_to_end(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--index-dir", tmp_path / "idx")
    assert "P@10" in result.stdout
    assert cv2.imread(str(tmp_path / "demo" / "montage.png")) is not None


def test_demo_writes_its_index_under_name_and_never_replaces_another(tmp_path, index_dir, collection):
    result = run("demo", "--out", tmp_path / "demo", "--index-dir", index_dir, "--name", "try-me")
    assert "--name try-me" in result.stdout and (index_dir / "try-me").is_dir() and not (index_dir / "demo").exists()
    run("demo", "--out", tmp_path / "demo", "--index-dir", index_dir, "--name", "try-me")  # its own: rebuilt
    run("index", collection, "--name", "mine", "--index-dir", index_dir)
    kept = lambda: sorted(p.name for p in (index_dir / "mine").iterdir() if not p.name.endswith(("-shm", "-wal")))  # noqa: E731
    before = kept()
    message = fails("demo", "--out", tmp_path / "demo2", "--index-dir", index_dir, "--name", "mine")
    assert "index 'mine' exists and is not this demo's" in message and "another --name" in message
    assert kept() == before
    assert not (tmp_path / "demo2").exists()  # refused before anything was written
    assert json.loads(run("info", "mine", "--index-dir", index_dir, "--json").stdout)["images"] == 15


def test_every_command_accepts_name():
    """Every command the app registers takes --name: the index (or config) it works on, or one line saying why not."""
    group = typer.main.get_command(app)
    assert len(group.commands) >= 13
    for name, command in sorted(group.commands.items()):
        options = [opt for param in command.params for opt in param.opts]  # Typer's own click: no isinstance on click's
        assert "--name" in options, f"cbir {name} takes no --name"
    assert "builds a model, not an index" in fails("train-autoencoder", "photos", "--out", "m", "--name", "x")


def test_every_command_has_help():
    """Every command the app registers, so a new one is covered without editing this test."""
    group = typer.main.get_command(app)
    assert set(group.commands) == {info.name for info in app.registered_commands}
    for name, command in sorted(group.commands.items()):
        result = run(name, "--help", env={"COLUMNS": "400"})
        summary = (command.help or "").strip().splitlines()
        assert summary and summary[0] in result.stdout, name
        assert f"Usage: cbir {name}" in " ".join(result.stdout.split()), name
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":  # Typer vendors click: isinstance on click.Option never held
                assert param.help, f"cbir {name} {param.opts[0]} has no help"


# -- bad input ------------------------------------------------------------------
def test_missing_folder(tmp_path, index_dir):
    assert "does not exist" in fails("index", tmp_path / "nope", "--name", "x", "--index-dir", index_dir)


def test_empty_folder(tmp_path, index_dir):
    (tmp_path / "empty").mkdir()
    assert "no image files" in fails("index", tmp_path / "empty", "--name", "x", "--index-dir", index_dir)
    assert not (index_dir / "x").exists()


def test_folder_of_only_broken_files(tmp_path, index_dir):
    add_broken_files(tmp_path / "junk")
    result = runner.invoke(app, ["index", str(tmp_path / "junk"), "--name", "junk", "--index-dir", str(index_dir)])
    assert result.exit_code != 0 and "error: none of the image files" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (index_dir / "junk").exists()


def test_query_file_that_is_not_an_image(indexed, index_dir, tmp_path):
    bogus = tmp_path / "bogus.jpg"
    bogus.write_text("hello")
    assert "not a readable image" in fails("query", bogus, "--name", "photos", "--index-dir", index_dir)


def test_unknown_index_name(index_dir, indexed):
    message = fails("query", indexed / "red" / "red-0.jpg", "--name", "nope", "--index-dir", index_dir)
    assert "no index named 'nope'" in message and "photos" in message
    fails("info", "nope", "--index-dir", index_dir)
    fails("evaluate", "--name", "nope", "--index-dir", index_dir)


# A damaged FAISS file is repaired from the catalogue: tests/test_snapshots.py.
@pytest.mark.parametrize(
    "damage,named",
    [
        ("truncate-catalogue", "catalogue.sqlite is unreadable"),
        ("break-manifest", "index 'photos' is corrupt: manifest.json is unreadable"),
        ("drop-manifest", "index 'photos' has no manifest.json"),
    ],
)
def test_corrupt_index_directory(indexed, index_dir, damage, named):
    path = index_dir / "photos"
    if damage == "truncate-catalogue":
        catalogue = path / "catalogue.sqlite"
        for extra in path.glob("catalogue.sqlite-*"):
            extra.unlink()
        catalogue.write_bytes(catalogue.read_bytes()[:200])
    elif damage == "break-manifest":
        (path / "manifest.json").write_text('{"format": "cbir-index"')
    else:
        (path / "manifest.json").unlink()
    message = fails("query", indexed / "red" / "red-0.jpg", "--name", "photos", "--index-dir", index_dir)
    assert named in message  # the damage itself, not just the index's name


def test_k_larger_than_the_collection_returns_all_of_it_with_a_note(indexed, index_dir):
    result = run("query", indexed / "red" / "red-0.jpg", "--name", "photos", "--index-dir", index_dir, "-k", "99", "--json")
    assert len(json.loads(result.stdout)["results"]) == 15
    assert "k=99 is larger than index 'photos', which holds 15 images" in result.stderr


@pytest.mark.parametrize("problem", ["missing", "extra"])
def test_labels_csv_with_missing_or_extra_rows_warns_and_evaluates(indexed, index_dir, tmp_path, problem):
    files = sorted(indexed.rglob("*.jpg"))
    rows = [f"photos/{p.parent.name}/{p.name},{p.parent.name}" for p in files]
    if problem == "missing":
        rows = rows[1:]
    else:
        rows.append("photos/red/ghost.jpg,red")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    result = run("evaluate", "--name", "photos", "--index-dir", index_dir, "--labels", csv, "--json")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert ("no row for 1 of 15" in warnings[0]) if problem == "missing" else ("1 file(s) that are not in the index" in warnings[0])
    # The unlabelled image is no query; an extra row changes nothing.
    assert json.loads(result.stdout)["n_queries"] == (14 if problem == "missing" else 15)


def test_labels_at_index_time_follow_the_same_rule_as_at_evaluation(collection, tmp_path):
    """An image the CSV does not name gets no label (not its folder name), with one warning."""
    files = sorted(collection.rglob("*.jpg"))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "\n".join(f"{p},{p.parent.name}" for p in files[1:]) + "\n")
    index_dir = tmp_path / "indexes"
    result = run("index", collection, "--name", "x", "--index-dir", index_dir, "--labels", csv)
    assert any("no row for 1 of" in line for line in result.stderr.splitlines())
    stored = json.loads(run("evaluate", "--name", "x", "--index-dir", index_dir, "--json").stdout)
    given = json.loads(run("evaluate", "--name", "x", "--index-dir", index_dir, "--labels", csv, "--json").stdout)
    assert stored["n_queries"] == given["n_queries"] == len(files) - 1
    assert stored["map"] == given["map"]


def test_collection_through_a_symlink_matches_its_labels_csv(collection, tmp_path):
    link = tmp_path / "linked"
    link.symlink_to(collection, target_is_directory=True)
    files = sorted(collection.rglob("*.jpg"))
    csv = collection / "labels.csv"  # reached through the real path, indexed through the link
    csv.write_text("path,label\n" + "\n".join(f"{p.relative_to(collection)},c-{p.parent.name}" for p in files) + "\n")
    index_dir = tmp_path / "indexes"
    result = run("index", link, "--name", "x", "--index-dir", index_dir, "--labels", csv)
    assert "warning" not in result.stderr
    report = json.loads(run("evaluate", "--name", "x", "--index-dir", index_dir, "--json").stdout)
    assert set(report["per_class"]) == {f"c-{name}" for name in ("red", "green", "blue")}


def test_index_directory_that_is_not_writable(collection, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "not a folder" in fails("index", collection, "--name", "x", "--index-dir", blocker / "indexes")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    # Tests may run as root, which may write anywhere: simulate the permission check failing.
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if mode & os.W_OK and str(p).startswith(str(readonly)) else real_access(p, mode)
    )
    assert "permission denied" in fails("index", collection, "--name", "x", "--index-dir", readonly)
    assert list(readonly.iterdir()) == []


def test_color_commands_never_import_tensorflow(indexed, index_dir, tmp_path):
    script = f"""
import sys
from typer.testing import CliRunner
from cbir.cli import app
runner = CliRunner()
for args in (["--help"], ["index", {str(indexed)!r}, "--name", "p2", "--index-dir", {str(index_dir)!r}],
             ["query", {str(indexed / "red" / "red-0.jpg")!r}, "--name", "p2", "--index-dir", {str(index_dir)!r}, "--json"],
             ["evaluate", "--name", "p2", "--index-dir", {str(index_dir)!r}], ["info", "p2", "--index-dir", {str(index_dir)!r}],
             ["list", "--index-dir", {str(index_dir)!r}]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.stderr)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("LOADED", loaded)
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in output
    importtime = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cbir", "--help"], capture_output=True, text=True, check=True
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in importtime.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras")}
    assert "Usage" in importtime.stdout
