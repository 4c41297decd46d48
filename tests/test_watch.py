"""cbir watch: a watched folder's index equals a fresh ``cbir index`` of it, after edits, a kill, a Ctrl-C.

The watcher runs in a thread with a short debounce and a stop event; each
test waits (bounded) for the catalogue to list what is on disk, then stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("watchfiles")

from cbir.images.scan import scan_folder
from cbir.indexing.run import index_folder
from cbir.indexing.watch import ADDED, DELETED, MODIFIED, plan_batch, watch_folder
from cbir.retrieval.search import Searcher

from conftest import CLASS_COLOURS, coloured_image, make_collection, write_image

REPO = Path(__file__).resolve().parent.parent
FAST = dict(step_ms=50, debounce_ms=400, rust_timeout_ms=100)


# -- the plan of a batch (pure) -------------------------------------------------------
def test_plan_batch_keeps_images_and_folders_under_the_folder_once():
    changes = [
        (ADDED, "/photos/a/new.jpg"),
        (MODIFIED, "/photos/a/new.jpg"),
        (ADDED, "/photos/notes.txt"),  # not an image, not a folder: nothing to index
        (ADDED, "/photos/trip"),  # a folder moved in
        (ADDED, "/photos/trip/x.png"),  # covered by the folder's scan
        (DELETED, "/photos/b/old.JPG"),
        (ADDED, "/elsewhere/y.jpg"),
        (MODIFIED, "/photos/indexes/w/catalogue.sqlite"),  # the index's own writes
        (ADDED, "/photos/indexes/w/thumb.jpg"),
    ]
    batch = plan_batch(changes, "/photos", ignored=["/photos/indexes/w"], maybe_folder=lambda p: p == "/photos/trip")
    assert batch.paths == ["/photos/a/new.jpg", "/photos/b/old.JPG", "/photos/trip"]
    assert (batch.added, batch.modified, batch.deleted) == (3, 1, 1)
    assert plan_batch([(MODIFIED, "/photos/readme.md")], "/photos").empty


def test_scan_within_is_the_full_scan_restricted(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    write_image(root / "red" / "deep" / "z.png", coloured_image((1, 2, 3), 1))
    full = scan_folder(root).images
    within = [root / "red" / "deep", root / "blue" / "blue-1.jpg", root / "gone.jpg"]
    restricted = scan_folder(root, within=within).images
    assert restricted == [p for p in full if "deep" in str(p) or p.name == "blue-1.jpg"]
    assert scan_folder(root, within=[]).images == []


# -- watching --------------------------------------------------------------------------
def _contents(name, index_dir, probe):
    """Paths with hash, label and stored vector, and a query's ranking: what a user sees."""
    with Searcher.open(name, index_dir) as searcher:
        rows = {row.id: row for row in searcher.image_rows()}
        vectors = {}
        for ids, block in searcher.iter_original_vectors():
            for image_id, vector in zip(ids, block):
                vectors[rows[int(image_id)].path] = vector.copy()
        results = [(m.path, round(m.score, 5)) for m in searcher.query(probe, k=20).results]
    return {r.path: (r.sha256, r.label) for r in rows.values()}, vectors, results


def _assert_same_as_fresh(root, name, index_dir, probe):
    fresh = index_folder(root, "fresh", index_dir)
    assert fresh.total > 0
    rows, vectors, results = _contents(name, index_dir, probe)
    fresh_rows, fresh_vectors, fresh_results = _contents("fresh", index_dir, probe)
    assert rows == fresh_rows
    assert vectors.keys() == fresh_vectors.keys()
    for path, vector in vectors.items():
        np.testing.assert_allclose(vector, fresh_vectors[path], atol=1e-6)
    assert results == fresh_results


def _indexed(name, index_dir) -> dict[str, str]:
    try:
        with Searcher.open(name, index_dir) as searcher:
            return {row.path: row.sha256 for row in searcher.image_rows()}
    except Exception:  # not created yet
        return {}


def _wait_until_indexed(root, name, index_dir, timeout=30.0):
    """Until the catalogue lists exactly the images on disk, at their current content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        on_disk = {str(p) for p in scan_folder(root).images}
        indexed = _indexed(name, index_dir)
        if set(indexed) == on_disk:
            return
        time.sleep(0.1)
    raise AssertionError(f"the watcher did not catch up: {sorted(set(indexed) ^ on_disk)[:5]}")


class _Watcher:
    def __init__(self, root, name, index_dir, **options):
        self.stop = threading.Event()
        self.runs = []
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(root, name, index_dir), kwargs=options, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.runs and self.error is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the rescan at start has run: the watcher is in place
        assert self.runs, f"the watcher did not start: {self.error!r}"

    def _run(self, *args, **options):
        try:
            watch_folder(*args, stop_event=self.stop, on_run=lambda b, s: self.runs.append((b, s)), **FAST, **options)
        except BaseException as exc:  # shown by the test
            self.error = exc

    def close(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def test_create_modify_move_delete_while_watching_equals_a_fresh_index(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=4)
    index_dir = tmp_path / "indexes"
    index_folder(root, "watched", index_dir)
    (root / "red" / "red-3.jpg").unlink()  # while nothing watched: the rescan at start catches it
    watcher = _Watcher(root, "watched", index_dir)
    try:
        assert watcher.runs[0][0] is None and watcher.runs[0][1].removed == 1
        write_image(root / "green" / "new.png", coloured_image(CLASS_COLOURS["green"], 77))  # create
        write_image(root / "red" / "red-0.jpg", coloured_image(CLASS_COLOURS["blue"], 78))  # modify
        shutil.move(root / "blue" / "blue-1.jpg", root / "green" / "moved.jpg")  # move (a new label: its folder)
        (root / "blue" / "blue-2.jpg").unlink()  # delete
        shutil.move(root / "red", tmp_path / "red-away")  # a whole folder moved out
        (root / "trip").mkdir()
        shutil.copy(root / "green" / "green-0.jpg", root / "trip" / "copy.jpg")  # a copy: its vector reused
        _wait_until_indexed(root, "watched", index_dir)
    finally:
        watcher.close()
    batches = [s for b, s in watcher.runs if b is not None]
    assert sum(s.reused for s in batches) >= 2  # the moved file and the copy were not re-embedded
    assert sum(s.embedded for s in batches) <= 2  # only the new file (and the modified one, moved away with red/)
    _assert_same_as_fresh(root, "watched", index_dir, root / "green" / "green-1.jpg")


def test_a_burst_is_indexed_in_few_runs_not_one_a_file(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=1)
    index_dir = tmp_path / "indexes"
    watcher = _Watcher(root, "burst", index_dir)
    try:
        for n in range(60):
            write_image(root / "many" / f"{n}.png", coloured_image((n, 100, 200), n, size=(16, 16)))
        _wait_until_indexed(root, "burst", index_dir)
    finally:
        watcher.close()
    batches = [s for b, s in watcher.runs if b is not None]
    assert sum(s.added for s in batches) == 60
    assert len(batches) < 20


LIBRARY_WATCHER = (
    "from cbir.indexing.watch import watch_folder\n"
    "watch_folder(sys.argv[1], 'killed', sys.argv[2], step_ms=50, debounce_ms=400, rust_timeout_ms=100, batch_size=4,\n"
    "             on_run=lambda b, s: print('run', flush=True))\n"
)
CLI_WATCHER = (
    "from cbir.cli import main\n"
    "sys.argv = ['cbir', 'watch', sys.argv[1], '--name', 'killed', '--index-dir', sys.argv[2], '--quiet-ms', '50', '--batch-size', '4']\n"
    "main()\n"
)


def _watch_script(sleep: float, watcher: str = LIBRARY_WATCHER) -> str:
    """``watcher`` (watching argv[1] into index 'killed' in argv[2]) with each colour batch slowed, so a signal lands mid-batch."""
    return (
        "import sys, time\n"
        "from cbir.features.color import ColorHistogram\n"
        "original = ColorHistogram.transform_prepared\n"
        "def slow(self, items):\n"
        f"    time.sleep({sleep!r})\n"
        "    return original(self, items)\n"
        "ColorHistogram.transform_prepared = slow\n" + watcher
    )


def test_a_watcher_killed_mid_batch_resumes_to_a_fresh_index(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    index_dir = tmp_path / "indexes"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", _watch_script(0.15), str(root), str(index_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "run"  # the rescan at start is committed
        for n in range(40):
            write_image(root / "new" / f"n{n}.png", coloured_image((200, n * 5, 10), n))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("/new/" in p for p in _indexed("killed", index_dir)):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # some of the batch is committed, not all of it
    finally:
        process.kill()
        process.wait()
    partial = [p for p in _indexed("killed", index_dir) if "/new/" in p]
    assert 0 < len(partial) < 40
    watcher = _Watcher(root, "killed", index_dir)  # restart: the rescan at start finishes the batch
    watcher.close()
    assert watcher.runs[0][1].added == 40 - len(partial)
    _assert_same_as_fresh(root, "killed", index_dir, root / "new" / "n3.png")


@pytest.mark.parametrize("command", [["watch", "--quiet-ms", "50"], ["index", "--watch"]])
def test_ctrl_c_stops_the_cli_watcher_with_one_line(tmp_path, command):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cbir", command[0], str(root), "--name", "w", "--index-dir", str(tmp_path / "idx"), *command[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = process.stdout.readline()
    assert line.startswith("rescan: 6 added"), line
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.strip().splitlines() == ["stopped watching: every batch finished is committed; the next start indexes what is left"]


def test_without_watchfiles_one_line_names_the_extra(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=1)
    script = "import sys; sys.modules['watchfiles'] = None; sys.argv = ['cbir', *sys.argv[1:]]; from cbir.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, "watch", str(root), "--index-dir", str(tmp_path / "idx")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip() == "error: watching a folder needs watchfiles, which is not installed: pip install 'cbir[watch]'"
    assert not (tmp_path / "idx").exists()  # nothing indexed before the error


def test_a_served_index_shows_a_watched_change_at_its_next_refresh(tmp_path):
    from cbir.server.live import IndexPool

    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    index_dir = tmp_path / "indexes"
    index_folder(root, "served", index_dir)
    pool = IndexPool(index_dir, refresh_interval=0).open()
    watcher = _Watcher(root, "served", index_dir)
    try:
        new = write_image(root / "new" / "fresh.png", coloured_image((10, 220, 240), 5))
        _wait_until_indexed(root, "served", index_dir)
        with pool.get("served").use() as searcher:
            assert searcher.size == 6  # the served state until the pool looks again
        pool.refresh()
        with pool.get("served").use() as searcher:
            assert searcher.size == 7 and searcher.query(new, k=1).results[0].path == str(new)
    finally:
        watcher.close()
        pool.close()


def test_ctrl_c_mid_batch_keeps_what_was_committed_and_a_restart_completes_it(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    index_dir = tmp_path / "indexes"
    script = _watch_script(0.15, CLI_WATCHER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script, str(root), str(index_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().startswith("rescan: 6 added")
        for n in range(40):
            write_image(root / "new" / f"n{n}.png", coloured_image((200, n * 5, 10), n))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("/new/" in p for p in _indexed("killed", index_dir)):
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stopped watching: every batch finished is committed; the next start indexes what is left"
    assert "Traceback" not in err
    partial = [p for p in _indexed("killed", index_dir) if "/new/" in p]
    assert 0 < len(partial) < 40
    watcher = _Watcher(root, "killed", index_dir)
    watcher.close()
    _assert_same_as_fresh(root, "killed", index_dir, root / "new" / "n3.png")
