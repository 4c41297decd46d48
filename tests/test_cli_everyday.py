"""Everyday use through the CLI (issue 12): where indexes live, names, commands, scripts, results."""

import json
import os

import pytest
from typer.testing import CliRunner

from cbir.cli import app

runner = CliRunner()


def run(*args, expect=0, input=None):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def fails(*args, input=None):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code != 0, result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def indexed(collection, index_dir):
    run("index", collection, "--name", "photos", "--index-dir", index_dir)
    return collection


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A current directory without ./indexes, no $CBIR_INDEX_DIR, and a private per-user data folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("CBIR_INDEX_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# -- 1. where indexes live ------------------------------------------------------
def test_indexes_go_to_the_user_data_folder_and_are_found_from_anywhere(collection, elsewhere, monkeypatch):
    monkeypatch.chdir(collection)
    run("index", ".", "--name", "photos")
    assert not (collection / "indexes").exists()  # nothing created inside the photo folder
    home = elsewhere / "data" / "cbir" / "indexes"
    assert (home / "photos" / "manifest.json").is_file()
    monkeypatch.chdir(elsewhere)
    data = json.loads(run("query", collection / "red" / "red-0.jpg", "--name", "photos", "--json", "-k", "1").stdout)
    assert data["results"][0]["path"] == str(collection / "red" / "red-0.jpg")


def test_index_dir_order_option_env_local_folder(collection, elsewhere, monkeypatch):
    cwd = elsewhere / "cwd"
    (cwd / "indexes").mkdir()  # an existing ./indexes is used
    run("index", collection, "--name", "local")
    assert (cwd / "indexes" / "local" / "manifest.json").is_file()
    monkeypatch.setenv("CBIR_INDEX_DIR", str(elsewhere / "from-env"))  # the variable beats ./indexes
    run("index", collection, "--name", "env")
    assert (elsewhere / "from-env" / "env" / "manifest.json").is_file()
    run("index", collection, "--name", "opt", "--index-dir", "~/tilde")  # the option beats both; ~ expanded
    assert (elsewhere / "home" / "tilde" / "opt" / "manifest.json").is_file()
    assert not (cwd / "~").exists()


def test_unknown_index_says_where_it_looked_and_how_to_look_elsewhere(indexed, index_dir):
    message = fails("query", indexed / "red" / "red-0.jpg", "--name", "nope", "--index-dir", index_dir)
    assert str(index_dir.absolute()) in message and "--index-dir" in message and "CBIR_INDEX_DIR" in message


def test_failed_first_run_leaves_no_indexes_folder_in_the_cwd(tmp_path, elsewhere, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    fails("index", ".")
    assert list(empty.iterdir()) == []


# -- 8. index names ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "my photos", "a.b", "../x", "-", "x" * 101])
def test_index_names_follow_the_stated_rule(collection, index_dir, bad):
    if bad == "-":
        bad = "a+b"
    message = fails("index", collection, "--name", bad, "--index-dir", index_dir)
    assert "letters, digits" in message
    assert not index_dir.exists() or list(index_dir.iterdir()) == []


def test_default_name_from_a_folder_with_spaces(tmp_path, index_dir):
    from conftest import make_collection

    make_collection(tmp_path / "My Photos 2024", per_class=2)
    result = json.loads(run("index", tmp_path / "My Photos 2024", "--index-dir", index_dir, "--json").stdout)
    assert result["name"] == "My-Photos-2024"


# -- 13. commands -----------------------------------------------------------------
def test_version():
    from cbir import __version__

    assert run("--version").stdout.strip() == f"cbir {__version__}"


def test_info_and_list_take_name_as_option_or_argument(indexed, index_dir):
    by_option = json.loads(run("info", "--name", "photos", "--index-dir", index_dir, "--json").stdout)
    by_argument = json.loads(run("info", "photos", "--index-dir", index_dir, "--json").stdout)
    assert by_option["images"] == by_argument["images"] == 15
    assert "two index names" in fails("info", "photos", "--name", "other", "--index-dir", index_dir)
    assert "which index" in fails("info", "--index-dir", index_dir)
    run("index", indexed / "red", "--name", "reds", "--index-dir", index_dir)
    listed = json.loads(run("list", "--name", "reds", "--index-dir", index_dir, "--json").stdout)
    assert [row["name"] for row in listed] == ["reds"]
    assert [row["name"] for row in json.loads(run("list", "--index-dir", index_dir, "--json").stdout)] == ["photos", "reds"]
    assert "no index named 'nope'" in fails("list", "nope", "--index-dir", index_dir)


def test_delete_needs_yes_when_not_interactive(indexed, index_dir):
    assert "--yes" in fails("delete", "photos", "--index-dir", index_dir)
    assert (index_dir / "photos" / "manifest.json").is_file()
    run("delete", "--name", "photos", "--index-dir", index_dir, "--yes")
    assert list(index_dir.iterdir()) == []
    assert "no index named 'photos'" in fails("delete", "photos", "--index-dir", index_dir, "--yes")


def test_delete_takes_the_write_lock(indexed, index_dir):
    from cbir.store import WriteLock

    lock = WriteLock(index_dir / "photos")
    try:
        assert "being written" in fails("delete", "photos", "--index-dir", index_dir, "--yes")
    finally:
        lock.release()
    assert (index_dir / "photos" / "manifest.json").is_file()


def test_delete_refuses_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "idx" / "notes").mkdir(parents=True)
    (tmp_path / "idx" / "notes" / "keep.txt").write_text("mine")
    assert "does not look like a cbir index" in fails("delete", "notes", "--index-dir", tmp_path / "idx", "--yes")
    assert (tmp_path / "idx" / "notes" / "keep.txt").is_file()


def _all_commands():
    import typer.main

    group = typer.main.get_command(app)
    return [[]] + [[name] for name in group.commands]


@pytest.mark.parametrize("command", _all_commands(), ids=lambda c: c[0] if c else "cbir")
def test_help_has_no_bool_placeholder_and_one_style_of_defaults(command):
    text = run(*command, "--help").stdout
    assert "<bool>" not in text and "[default:" not in text


# -- 5. moved or deleted photos ------------------------------------------------------
def test_prune_drops_entries_of_files_that_are_gone(indexed, index_dir):
    gone = [indexed / "red" / "red-0.jpg", indexed / "blue" / "blue-3.jpg"]
    for path in gone:
        path.unlink()
    listed = json.loads(run("prune", "photos", "--index-dir", index_dir, "--dry-run", "--json").stdout)
    assert listed["removed"] == sorted(map(str, gone)) and listed["dry_run"] is True
    assert json.loads(run("info", "photos", "--index-dir", index_dir, "--json").stdout)["images"] == 15
    result = run("prune", "--name", "photos", "--index-dir", index_dir)
    assert result.stdout.splitlines() == sorted(map(str, gone)) and "dropped 2" in result.stderr
    assert json.loads(run("info", "photos", "--index-dir", index_dir, "--json").stdout)["images"] == 13
    data = json.loads(run("query", indexed / "red" / "red-1.jpg", "--name", "photos", "--index-dir", index_dir, "-k", "13", "--json").stdout)
    assert not {r["path"] for r in data["results"]} & set(map(str, gone))


# -- 2. optional extras ---------------------------------------------------------------
_BLOCKING_RUNNER = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    # As if these packages were not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from typer.testing import CliRunner
from cbir.cli import app
result = CliRunner().invoke(app, sys.argv[2:])
print(json.dumps({"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}))
"""


def run_without(blocked, *args):
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-c", _BLOCKING_RUNNER, ",".join(blocked), *map(str, args)], capture_output=True, text=True, check=True
    )
    return json.loads(completed.stdout.splitlines()[-1])


def test_a_command_needing_a_missing_extra_names_it(collection, index_dir):
    result = run_without(["tensorflow", "keras"], "index", collection, "--name", "deep", "--index-dir", index_dir,
                         "--backbone", "mobilenet", "--weights", "none", "--input-size", "32")
    lines = result["stderr"].strip().splitlines()
    assert result["code"] != 0 and len(lines) == 1, result
    assert lines[0].startswith("error: ") and "pip install 'cbir[cnn]'" in lines[0]
    assert not (index_dir / "deep").exists()
    # The core install still does colour work.
    assert run_without(["tensorflow", "keras", "openvino", "ai_edge_litert"], "index", collection, "--index-dir", index_dir)["code"] == 0


def test_querying_a_cnn_index_needs_only_litert(collection, index_dir):
    run("index", collection, "--name", "deep", "--index-dir", index_dir, "--backbone", "mobilenet", "--weights", "none",
        "--input-size", "32", "--runtime", "tflite")
    query = collection / "red" / "red-1.jpg"
    found = run_without(["tensorflow", "keras", "openvino"], "query", query, "--name", "deep", "--index-dir", index_dir, "--json")
    assert found["code"] == 0, found
    assert json.loads(found["stdout"])["results"][0]["path"] == str(query)
    missing = run_without(["tensorflow", "keras", "openvino", "ai_edge_litert"], "query", query, "--name", "deep",
                          "--index-dir", index_dir)
    assert missing["code"] != 0 and missing["stderr"].strip().startswith("error: ")
    assert "pip install 'cbir[litert]'" in missing["stderr"] and len(missing["stderr"].strip().splitlines()) == 1


def test_demo_works_without_scikit_learn(tmp_path):
    result = run_without(["sklearn", "scipy", "tensorflow", "keras", "openvino", "ai_edge_litert"],
                         "demo", "--out", tmp_path / "demo", "--index-dir", tmp_path / "idx")
    assert result["code"] == 0, result
    assert "P@1 1.000" in result["stdout"] and (tmp_path / "demo" / "montage.png").is_file()
