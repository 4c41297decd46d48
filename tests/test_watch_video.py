"""cbir watch on a folder with videos: a video added, replaced, moved and deleted while watching.

After each batch the catalogue's entries (a video's frames keyed ``VIDEO@TIME``)
and vectors equal a fresh ``cbir index`` of the folder, and a moved video
keeps its stored frames rather than being decoded again. The watcher is driven
as in test_watch.py; videos are written as in test_video.py.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("watchfiles")
pytest.importorskip("cv2")

from cbir.compute import work
from cbir.fileio import file_sha256
from cbir.images.scan import scan_folder
from cbir.images.video import frame_at
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.catalogue import frame_key

from conftest import make_collection
from test_video import painted, write_video
from test_watch import _Watcher


def _frames_of(video) -> str:
    """The start of the keys of ``video``'s frames."""
    return frame_key(str(video), 0.0).removesuffix(f"{0.0:012.3f}")  # VIDEO/@


def _entries(name, index_dir, probe):
    """Each entry's key (a frame's names its time) with hash and label, its stored vector, and a ranking."""
    with Searcher.open(name, index_dir) as searcher:
        rows = {row.id: row for row in searcher.image_rows()}
        vectors = {}
        for ids, block in searcher.iter_original_vectors():
            for image_id, vector in zip(ids, block):
                vectors[rows[int(image_id)].key] = vector.copy()
        found = searcher.query(probe, k=len(rows)).results
    # Ranked by score; ties (a histogram's zeros) in either index's id order, so by name here.
    results = sorted(((-round(m.score, 5), m.path, m.time) for m in found), key=lambda r: (r[0], r[1], r[2] or 0.0))
    return {r.key: (r.sha256, r.label) for r in rows.values()}, vectors, results


def _assert_same_as_fresh(root, index_dir, fresh_name, probe):
    index_folder(root, fresh_name, index_dir, workers=1)
    rows, vectors, results = _entries("watched", index_dir, probe)
    fresh_rows, fresh_vectors, fresh_results = _entries(fresh_name, index_dir, probe)
    assert rows == fresh_rows
    assert vectors.keys() == fresh_vectors.keys()
    for key, vector in vectors.items():
        np.testing.assert_allclose(vector, fresh_vectors[key], atol=1e-6)
    assert results == fresh_results
    return rows


def _indexed(index_dir) -> set[tuple[str, str]]:
    with Searcher.open("watched", index_dir) as searcher:
        return {(row.path, row.sha256) for row in searcher.image_rows()}


def _wait_until_current(root, index_dir, timeout=60.0):
    """Until the catalogue holds every file on disk at its current content (a video's frames share its hash), and nothing else."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        on_disk = {(str(p), file_sha256(p)) for p in scan_folder(root).images}
        indexed = _indexed(index_dir)
        if indexed == on_disk:
            return
        time.sleep(0.1)
    raise AssertionError(f"the watcher did not catch up: {sorted(indexed ^ on_disk)[:5]}")


def _summaries_once_reported(watcher, since, done, timeout=10.0):
    """The batch runs after the first ``since``, once one has ``done`` (a run is reported just after its commit)."""
    deadline = time.monotonic() + timeout
    while True:
        batches = [summary for batch, summary in watcher.runs[since:] if batch is not None]
        if any(done(s) for s in batches) or time.monotonic() > deadline:
            return batches
        time.sleep(0.05)


def test_a_video_added_replaced_moved_and_deleted_while_watching_equals_a_fresh_index(tmp_path, monkeypatch):
    root = tmp_path / "media"
    make_collection(root, per_class=2)
    index_dir = tmp_path / "indexes"
    index_folder(root, "watched", index_dir, workers=1)
    decoded = []
    real = work.sample_frames
    monkeypatch.setattr(work, "sample_frames", lambda path, *a, **k: (decoded.append(str(path)), real(path, *a, **k))[1])
    watcher = _Watcher(root, "watched", index_dir, workers=1)  # in this process, so the decodes are seen
    clip = root / "clips" / "walk.mp4"
    probe = frame_at(write_video(tmp_path / "probe.mp4", 10), 5.3)
    try:
        write_video(clip, 10)  # added (written in place, as a camera or a copy does)
        _wait_until_current(root, index_dir)
        added = _assert_same_as_fresh(root, index_dir, "fresh-added", probe)
        frames = sorted(key for key in added if key.startswith(_frames_of(clip)))
        assert len(frames) >= 5

        def repainted(time_s, size):
            return painted(time_s + 100, size)

        replacement = write_video(tmp_path / "elsewhere" / "new.mp4", 4, paint=repainted)
        os.replace(replacement, clip)  # replaced at once by other content, shorter: fewer frames, all new
        _wait_until_current(root, index_dir)
        replaced = _assert_same_as_fresh(root, index_dir, "fresh-replaced", probe)
        now = sorted(key for key in replaced if key.startswith(_frames_of(clip)))
        assert now and now != frames and all(replaced[key][0] == file_sha256(clip) for key in now)

        decoded.clear()
        runs_before = len(watcher.runs)
        moved = root / "trips" / "walk.mp4"
        moved.parent.mkdir()
        shutil.move(clip, moved)  # moved: its frames are found by its hash, not decoded again
        _wait_until_current(root, index_dir)
        assert decoded == []
        batches = _summaries_once_reported(watcher, runs_before, lambda s: s.reused)
        assert sum(s.reused for s in batches) == len(now) and sum(s.embedded for s in batches) == 0
        after_move = _assert_same_as_fresh(root, index_dir, "fresh-moved", probe)
        assert sorted(k[len(_frames_of(moved)):] for k in after_move if k.startswith(_frames_of(moved))) == sorted(k[len(_frames_of(clip)):] for k in now)
        assert not [k for k in after_move if k.startswith(_frames_of(clip))]

        moved.unlink()  # deleted: all of its frames go
        _wait_until_current(root, index_dir)
        deleted = _assert_same_as_fresh(root, index_dir, "fresh-deleted", probe)
        assert not [k for k in deleted if ".mp4/@" in k] and len(deleted) == 6
    finally:
        watcher.close()
