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


def test_delete_asks_at_a_terminal(indexed, index_dir, monkeypatch):
    import cbir.cli.manage

    monkeypatch.setattr(cbir.cli.manage, "_interactive", lambda: True)
    kept = runner.invoke(app, ["delete", "photos", "--index-dir", str(index_dir)], input="n\n")
    assert kept.exit_code == 1 and "delete index 'photos'" in kept.stderr
    assert (index_dir / "photos" / "manifest.json").is_file()
    run("delete", "photos", "--index-dir", index_dir, input="y\n")
    assert not (index_dir / "photos").exists()


def test_delete_takes_the_write_lock(indexed, index_dir):
    from cbir.store.directory import WriteLock

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


# -- 5, 9. missing files flagged; montage and HTML galleries ------------------------------
def test_a_result_whose_file_is_gone_is_flagged(indexed, index_dir, tmp_path):
    import cv2

    query = indexed / "red" / "red-1.jpg"
    gone = indexed / "red" / "red-2.jpg"
    gone.unlink()
    data = json.loads(run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "5", "--json").stdout)
    flags = {r["path"]: r["exists"] for r in data["results"]}
    assert flags[str(gone)] is False and flags[str(query)] is True
    text = run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "5")
    line = next(line for line in text.stdout.splitlines() if str(gone) in line)
    assert line.endswith("(missing)") and "cbir prune photos" in text.stderr
    out = tmp_path / "grid.png"
    run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "5", "--montage", out)
    grid = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    rank = [r["path"] for r in data["results"]].index(str(gone)) + 1  # tile index: the query is tile 0
    tile = grid[:192, rank * 192 : (rank + 1) * 192]
    red = (tile[..., 0] > 150) & (tile[..., 1] < 80) & (tile[..., 2] < 80)
    assert red.sum() > 300  # the crossed, red-framed placeholder, not a blank tile


def test_montage_keeps_aspect_ratio_and_shows_the_parent_folder(tmp_path, index_dir):
    import cv2
    import numpy as np

    from cbir.render.montage import _tile, short_name

    wide = tmp_path / "trip" / "wide.png"
    wide.parent.mkdir()
    cv2.imwrite(str(wide), np.full((50, 200, 3), (0, 0, 255), np.uint8))
    tile = _tile(str(wide), 192, "#1", short_name(wide))
    painted = np.argwhere((tile[:192, :, 0] > 200) & (tile[:192, :, 1] < 50))  # RGB red
    height, width = np.ptp(painted, axis=0) + 1
    assert abs(width / height - 4.0) < 0.2
    assert short_name(wide) == "trip/wide.png"


def test_html_gallery_for_one_and_many_queries(indexed, index_dir, tmp_path):
    import base64
    import html.parser

    out = tmp_path / "one.html"
    run("query", indexed / "red" / "red-1.jpg", "--name", "photos", "--index-dir", index_dir, "-k", "3", "--html", out)
    page = out.read_text()
    images = [a for a in page.split("src='")[1:]]
    assert len(images) == 4 and all(src.startswith("data:image/jpeg;base64,") for src in images)
    first = images[0].split("'")[0].split(",", 1)[1]
    assert base64.b64decode(first)[:3] == b"\xff\xd8\xff"  # an embedded JPEG, no external file
    assert "red/red-1.jpg" in page and "#1" in page
    html.parser.HTMLParser().feed(page)

    many = tmp_path / "many.html"
    run("query", indexed / "blue", "--name", "photos", "--index-dir", index_dir, "-k", "2", "--html", many)
    assert many.read_text().count("<section>") == 5
    assert "must end in .html" in fails("query", indexed / "blue", "--name", "photos", "--index-dir", index_dir, "--html", tmp_path / "x.png")


def test_duplicates_montage_and_html_show_the_groups(indexed, index_dir, tmp_path):
    import shutil

    import cv2

    shutil.copy(indexed / "red" / "red-0.jpg", indexed / "green" / "copy-of-red-0.jpg")
    run("index", indexed, "--name", "photos", "--index-dir", index_dir)
    page, grid = tmp_path / "dups.html", tmp_path / "dups.png"
    result = run("duplicates", "--name", "photos", "--index-dir", index_dir, "--threshold", "0.999", "--html", page, "--montage", grid)
    assert "exact group 1: 2 copies" in result.stdout
    text = page.read_text()
    assert text.count("<section>") == 1 and "red-0.jpg" in text and "copy-of-red-0.jpg" in text
    assert "exact copies 1" in text and text.count("class='query'") == 1  # the keeper, framed
    assert text.count("data:image/jpeg;base64,") == 2
    image = cv2.imread(str(grid))
    assert image is not None and image.shape[1] == 2 * 160  # one line, two tiles


# -- 10. scripts --------------------------------------------------------------------
def test_paths_and_nul_separated_output(indexed, index_dir):
    query = indexed / "red" / "red-1.jpg"
    expected = [r["path"] for r in json.loads(run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "4", "--json").stdout)["results"]]
    assert run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "4", "--paths").stdout.splitlines() == expected
    raw = run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "4", "-0").stdout
    assert raw.split("\0") == expected + [""]
    assert "choose one" in fails("query", query, "--name", "photos", "--index-dir", index_dir, "--paths", "--json")


def test_query_from_standard_input(indexed, index_dir):
    query = indexed / "green" / "green-2.jpg"
    data = json.loads(run("query", "-", "--name", "photos", "--index-dir", index_dir, "-k", "2", "--json", input=query.read_bytes()).stdout)
    assert data["query"] == "<stdin>" and data["results"][0]["path"] == str(query)
    assert "standard input is empty" in fails("query", "-", "--name", "photos", "--index-dir", index_dir, input=b"")
    assert "not a readable image" in fails("query", "-", "--name", "photos", "--index-dir", index_dir, input=b"hello")


@pytest.fixture
def loopback(indexed):
    """An http server on 127.0.0.1 serving the collection, plus /big (over the size cap) and a 404."""
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(indexed), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_query_by_url_on_a_loopback_server(indexed, index_dir, loopback, monkeypatch):
    import cbir.images.sources

    url = f"{loopback}/blue/blue-3.jpg"
    data = json.loads(run("query", url, "--name", "photos", "--index-dir", index_dir, "-k", "1", "--json").stdout)
    assert data["query"] == url  # the URL as given, not mangled into a path
    assert data["results"][0]["path"] == str(indexed / "blue" / "blue-3.jpg")
    message = fails("query", f"{loopback}/nope.jpg", "--name", "photos", "--index-dir", index_dir)
    assert "HTTP 404" in message and f"{loopback}/nope.jpg" in message
    monkeypatch.setattr(cbir.images.sources, "MAX_QUERY_BYTES", 100)
    assert "larger than" in fails("query", url, "--name", "photos", "--index-dir", index_dir)
    # Another scheme is not fetched; the message quotes it as given (no "ftp:/example.org").
    assert "ftp://example.org/x.jpg" in fails("query", "ftp://example.org/x.jpg", "--name", "photos", "--index-dir", index_dir)


def test_a_url_that_does_not_answer_times_out(indexed, index_dir, monkeypatch):
    import socket

    import cbir.images.sources

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        monkeypatch.setattr(cbir.images.sources, "URL_TIMEOUT", 0.5)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.jpg"
        message = fails("query", url, "--name", "photos", "--index-dir", index_dir)
        assert message.startswith(f"error: cannot fetch {url}") and "timed out" in message
    finally:
        silent.close()


def test_piping_into_head_exits_quietly(indexed, index_dir):
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "cbir", "query", str(indexed / "red"), "--name", "photos", "--index-dir", str(index_dir), "-k", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before the first line is written
    stderr = process.stderr.read().decode()
    assert process.wait() == 0 and stderr == ""


# -- 11. results that help -------------------------------------------------------------
def test_exclude_self_drops_the_query_and_identical_copies(indexed, index_dir):
    import shutil

    query = indexed / "red" / "red-1.jpg"
    shutil.copy(query, indexed / "blue" / "copy-of-red-1.jpg")
    run("index", indexed, "--name", "photos", "--index-dir", index_dir)
    plain = json.loads(run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "3", "--json").stdout)
    assert {r["path"] for r in plain["results"][:2]} == {str(query), str(indexed / "blue" / "copy-of-red-1.jpg")}
    data = json.loads(run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "3", "--exclude-self", "--json").stdout)
    paths = [r["path"] for r in data["results"]]
    assert len(paths) == 3 and str(query) not in paths and str(indexed / "blue" / "copy-of-red-1.jpg") not in paths
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    folder = json.loads(run("query", indexed / "green", "--name", "photos", "--index-dir", index_dir, "-k", "2", "--exclude-self", "--json").stdout)
    assert all(entry["query"] not in [r["path"] for r in entry["results"]] for entry in folder)
    assert all(len(entry["results"]) == 2 for entry in folder)
    everything = json.loads(run("query", query, "--name", "photos", "--index-dir", index_dir, "-k", "50", "--exclude-self", "--json").stdout)
    assert len(everything["results"]) == 14  # 16 images less the query and its copy
    piped = json.loads(run("query", "-", "--name", "photos", "--index-dir", index_dir, "-k", "2", "--exclude-self", "--json", input=query.read_bytes()).stdout)
    assert str(query) not in [r["path"] for r in piped["results"]]


# -- 12. collections --------------------------------------------------------------------
def test_exclude_globs_and_hidden_files(collection, index_dir):
    import shutil

    (collection / ".thumbnails").mkdir()
    shutil.copy(collection / "red" / "red-0.jpg", collection / ".thumbnails" / "t.jpg")
    shutil.copy(collection / "red" / "red-0.jpg", collection / "red" / ".hidden.jpg")
    (collection / "raw").mkdir()
    shutil.copy(collection / "blue" / "blue-0.jpg", collection / "raw" / "b.jpg")
    shutil.copy(collection / "blue" / "blue-0.jpg", collection / "green" / "x.png")

    def indexed_paths(*options):
        run("index", collection, "--name", "p", "--index-dir", index_dir, *options)
        data = json.loads(run("query", collection / "red" / "red-0.jpg", "--name", "p", "--index-dir", index_dir, "-k", "99", "--json").stdout)
        return {os.path.relpath(r["path"], collection) for r in data["results"]}

    paths = indexed_paths("--exclude", "raw", "--exclude", "*.png")
    assert len(paths) == 15 and not any(p.startswith((".", "raw")) or "/." in p or p.endswith(".png") for p in paths)
    paths = indexed_paths("--include-hidden")  # an update: what the globs left out comes in, hidden files too
    assert {".thumbnails/t.jpg", "red/.hidden.jpg", "raw/b.jpg", "green/x.png"} <= paths and len(paths) == 19
    paths = indexed_paths("--exclude", "green/*")  # left out now: dropped like deleted files
    assert not any(p.startswith("green/") for p in paths) and len(paths) == 11


def test_two_new_copies_of_one_indexed_photo_both_get_its_vector(indexed, index_dir):
    import shutil

    original = indexed / "red" / "red-0.jpg"
    copies = [indexed / "copies" / "a.jpg", indexed / "copies" / "b.jpg"]
    copies[0].parent.mkdir()
    for copy in copies:
        shutil.copy(original, copy)
    run("index", indexed, "--name", "photos", "--index-dir", index_dir)
    data = json.loads(run("query", original, "--name", "photos", "--index-dir", index_dir, "-k", "17", "--json").stdout)
    top = {r["path"]: r["score"] for r in data["results"][:3]}
    assert set(top) == {str(original), *map(str, copies)} and all(score > 0.999 for score in top.values())
    assert len(data["results"]) == 17


def test_formats_cbir_cannot_read_are_counted_by_extension(collection, index_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # HEIC: readable with the formats extra only
    (collection / "phone").mkdir()
    for n in range(3):
        (collection / "phone" / f"IMG_{n}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (collection / "phone" / "IMG_9.jxl").write_bytes(b"\xff\x0a")
    (collection / "notes.txt").write_text("not an image")
    result = run("index", collection, "--name", "p", "--index-dir", index_dir)
    assert (
        "not indexed: 3 file(s) of a format cbir cannot read without pip install 'cbir[formats]' (3 .heic); "
        "files of formats cbir cannot read: 1 .jxl"
    ) in result.stdout
    data = json.loads(run("index", collection, "--name", "p", "--index-dir", index_dir, "--json").stdout)
    assert data["unsupported"] == {".heic": 3, ".jxl": 1}
    only_heic = collection / "phone"
    message = fails("index", only_heic, "--name", "q", "--index-dir", index_dir)
    assert "no image files" in message and "3 .heic" in message


@pytest.mark.parametrize("suffix", [".gif", ".ppm", ".pgm", ".jp2"])
def test_more_formats_are_read_where_opencv_can(tmp_path, index_dir, suffix):
    import cv2
    import numpy as np

    from cbir.images.scan import readable_extensions
    from conftest import coloured_image

    if suffix not in readable_extensions():
        pytest.skip(f"this OpenCV build has no {suffix} codec")
    folder = tmp_path / "formats"
    folder.mkdir()
    for n, colour in enumerate([(40, 40, 210), (200, 90, 30)]):
        image = cv2.resize(coloured_image(colour, seed=n), (64, 64))
        if suffix == ".pgm":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        ok, encoded = cv2.imencode(suffix, image)
        assert ok
        (folder / f"img-{n}{suffix}").write_bytes(encoded.tobytes())
    # Plain vectors and search (no re-ranking): the score must show the exact same embedding.
    data = json.loads(run("index", folder, "--name", "f", "--index-dir", index_dir, "--json", "--no-dba").stdout)
    assert data["added"] == 2 and data["skipped"] == 0
    query = folder / f"img-1{suffix}"
    found = json.loads(run("query", query, "--name", "f", "--index-dir", index_dir, "-k", "1", "--json", "--no-expand").stdout)
    assert found["results"][0]["path"] == str(query)
    assert np.isclose(found["results"][0]["score"], 1.0, atol=1e-4)


def test_removed_files_stay_out_of_later_updates_unless_asked(indexed, index_dir):
    def total():
        return json.loads(run("info", "photos", "--index-dir", index_dir, "--json").stdout)["images"]

    run("remove", indexed / "red", indexed / "blue" / "blue-0.jpg", "--name", "photos", "--index-dir", index_dir)
    assert total() == 9
    info = json.loads(run("info", "photos", "--index-dir", index_dir, "--json").stdout)
    assert info["removed_paths"] == [str(indexed / "blue" / "blue-0.jpg"), str(indexed / "red")]
    assert "2 path(s) left out of updates" in run("info", "photos", "--index-dir", index_dir).stdout
    update = json.loads(run("index", indexed, "--name", "photos", "--index-dir", index_dir, "--json").stdout)
    assert update["added"] == 0 and total() == 9  # the parent folder again: removals remembered
    json.loads(run("index", indexed / "red", "--name", "photos", "--index-dir", index_dir, "--json").stdout)
    assert total() == 14  # the removed folder itself, by name: asked back
    run("index", indexed, "--name", "photos", "--index-dir", index_dir)
    assert total() == 14  # blue-0.jpg still out
    run("index", indexed, "--name", "photos", "--index-dir", index_dir, "--include-removed")
    assert total() == 15
    run("index", indexed, "--name", "photos", "--index-dir", index_dir)
    assert total() == 15


def test_the_progress_bar_counts_every_step_but_updates_rich_a_few_times_a_second():
    # Redrawing per image cost the indexing process a quarter of its own work per colour image.
    from cbir.cli._common import _RichProgress

    class FakeRich:
        def __init__(self, *columns, **options):
            self.calls, self.done, self.tasks = 0, 0, [type("Task", (), {"speed": 100.0})()]

        def start(self):
            pass

        def stop(self):
            pass

        def add_task(self, description, total=None, **fields):
            return 0

        def advance(self, task, steps):
            self.calls, self.done = self.calls + 1, self.done + steps

        def update(self, task, **fields):
            pass

    bar = _RichProgress()
    bar._progress_class = FakeRich
    bar.start("indexing", 5000)
    fake = bar._bar
    for _ in range(5000):
        bar.advance()
    bar.stop()
    assert fake.done == 5000
    assert fake.calls < 50
