"""Bounded inputs and outputs (issue 23, items 8 and 9): file size cap, URL deadline, /dev/full, names, empty index."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.compute.work import load_file
from cbir.errors import ImageError, UsageError
from cbir.images.sources import fetch_url
from cbir.store.locations import check_index_name

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- 8. a cap on the bytes read --------------------------------------------------------------
def test_a_file_over_the_cap_is_not_read_and_is_skipped_with_its_size(collection, index_dir, monkeypatch):
    huge = collection / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(3 * 2**20)  # sparse: 3 MB on paper, nothing on disk
    monkeypatch.setenv("CBIR_MAX_FILE_MB", "2")
    loaded = load_file(huge)
    assert loaded.image is None and loaded.sha256 == "" and loaded.error.startswith("too large (3 MB, limit 2 MB")
    assert load_file(huge, max_bytes=4 * 2**20).error != loaded.error  # read (and refused as no image) under a larger cap
    result = cli("index", collection, "--name", "p", "--index-dir", index_dir)
    assert result.exit_code == 0 and "1 skipped" in result.stdout
    assert f"skipped: {huge}: too large (3 MB, limit 2 MB" in cli("info", "p", "--index-dir", index_dir).stdout
    query = one_error_line(cli("query", huge, "--name", "p", "--index-dir", index_dir))
    assert "huge.jpg" in query and "too large (3 MB, limit 2 MB" in query


def test_the_cap_setting_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("CBIR_MAX_FILE_MB", "lots")
    with pytest.raises(UsageError, match="CBIR_MAX_FILE_MB"):
        load_file(tmp_path / "x.jpg")


# -- 9. a URL that trickles --------------------------------------------------------------------
@pytest.fixture(params=["body", "headers"])
def trickling_server(request):
    """An HTTP server that trickles one byte every 50 ms: of its body (of a claimed 1,000), or of its headers."""
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def serve():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            if request.param == "body":
                connection.sendall(headers + b"\r\n")
            trickle = headers + b"X-Padding: " if request.param == "headers" else b""
            position = 0
            while not stop.is_set():
                try:
                    if position < len(trickle):
                        connection.sendall(trickle[position : position + 1])
                        position += 1
                    else:
                        connection.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.jpg"
    stop.set()
    listener.close()


def test_a_trickling_url_meets_one_deadline_and_is_named(trickling_server):
    started = time.monotonic()
    with pytest.raises(ImageError) as caught:
        fetch_url(trickling_server, timeout=0.5)  # each byte comes well within any per-read timeout
    assert time.monotonic() - started < 2.0
    assert trickling_server in str(caught.value) and "within 0.5 s" in str(caught.value)


# -- 9. output to a full device ------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("command", [["query", "{image}", "--name", "p"], ["evaluate", "--name", "p", "--json"]])
def test_output_to_a_full_device_is_one_error_line(collection, index_dir, command, tmp_path):
    import subprocess
    import sys

    assert cli("index", collection, "--name", "p", "--index-dir", index_dir).exit_code == 0
    args = [a.format(image=collection / "red" / "red-0.jpg") for a in command]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "cbir", *args, "--index-dir", str(index_dir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cannot write the output: No space left on device", done.stderr


# -- 9. names and an empty index -----------------------------------------------------------------
def test_an_index_name_cannot_start_with_a_dash(collection, index_dir):
    with pytest.raises(UsageError, match="not starting with '-'"):
        check_index_name("-x")
    assert check_index_name("x-1") == "x-1"
    assert "invalid index name '-x'" in one_error_line(cli("index", collection, "--name=-x", "--index-dir", index_dir))
    assert not (index_dir / "-x").exists()


def test_evaluating_an_empty_index_says_it_is_empty(collection, index_dir):
    assert cli("index", collection, "--name", "p", "--index-dir", index_dir).exit_code == 0
    assert cli("remove", collection, "--name", "p", "--index-dir", index_dir).exit_code == 0
    line = one_error_line(cli("evaluate", "--name", "p", "--index-dir", index_dir))
    assert line == "error: index 'p' is empty: there is nothing to evaluate (cbir index FOLDER adds images)"
