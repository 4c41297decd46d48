"""The indexing plan: decided as a pure function over the scan and the catalogue rows, then carried out."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import cbir.compute.work as file_work
import cbir.images.scan as scan_module
from cbir.indexing.plan import honour_removed, is_transient, plan_update
from cbir.indexing.run import index_folder
from cbir.store.writer import IndexWriter

from conftest import make_collection


def _row(id_, size=1, mtime=1, sha="a" * 64):
    return SimpleNamespace(id=id_, size=size, mtime_ns=mtime, sha256=sha)


def test_plan_sorts_files_into_new_changed_unchanged_and_gone():
    stats = {Path("/p/new.jpg"): (5, 5), Path("/p/same.jpg"): (1, 1), Path("/p/changed.jpg"): (2, 9), Path("/p/unstat.jpg"): None}
    rows = {"/p/same.jpg": _row(1), "/p/changed.jpg": _row(2, sha="c" * 64), "/p/gone.jpg": _row(3)}
    plan = plan_update(stats, rows, {"/p/gone-skip.jpg": (1, 1, "not an image")})
    assert plan.todo == [Path("/p/new.jpg"), Path("/p/changed.jpg"), Path("/p/unstat.jpg")]
    assert plan.known_sha256 == {Path("/p/changed.jpg"): "c" * 64}
    assert (plan.unchanged, plan.removed_ids, plan.removed_skipped) == (1, [3], ["/p/gone-skip.jpg"])


def test_rows_under_a_folder_that_could_not_be_listed_are_kept():
    rows = {"/p/share/a.jpg": _row(1), "/p/share/sub/b.jpg": _row(2), "/p/other/c.jpg": _row(3)}
    plan = plan_update({}, rows, {"/p/share/d.jpg": (1, 1, "truncated")}, unlisted=["/p/share"])
    assert plan.removed_ids == [3] and plan.removed_skipped == [] and plan.kept_unlisted == 2


def test_skips_for_reasons_that_may_pass_are_retried_and_others_are_not():
    stats = {Path("/p/locked.jpg"): (1, 1), Path("/p/broken.jpg"): (1, 1)}
    skipped = {"/p/locked.jpg": (1, 1, "permission denied"), "/p/broken.jpg": (1, 1, "not an image")}
    plan = plan_update(stats, {}, skipped)
    assert plan.todo == [Path("/p/locked.jpg")] and plan.retried == 1 and plan.still_skipped == 1
    assert is_transient("Input/output error") and not is_transient("truncated")
    assert is_transient("too large (300 MB, limit 256 MB; $CBIR_MAX_FILE_MB raises it)")  # the limit may be raised
    assert not is_transient("image too large (90000x90000 pixels, limit 180,000,000)")  # the pixel cap is not the size cap


def test_removed_paths_are_left_out_unless_asked_back():
    files = [Path("/p/a/1.jpg"), Path("/p/b/2.jpg")]
    kept = honour_removed(["/p/a"], Path("/p"), files, include_removed=False)
    assert kept.files == [Path("/p/b/2.jpg")] and kept.record is None and kept.left_out == 1
    asked = honour_removed(["/p/a"], Path("/p/a"), files, include_removed=False)  # indexing the removed folder itself
    assert asked.files == files and asked.record == []


def test_an_unlistable_subfolder_keeps_its_images_in_the_index(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root, per_class=3)
    first = index_folder(root, "p", tmp_path / "idx")
    real_walk = os.walk

    def walk(top, **kwargs):  # "red" cannot be listed this time (an unmounted share, as root chmod cannot show it)
        for folder, subfolders, names in real_walk(top, **kwargs):
            if "red" in subfolders:
                subfolders.remove("red")
                kwargs["onerror"](PermissionError(13, "Permission denied", os.path.join(folder, "red")))
            yield folder, subfolders, names

    monkeypatch.setattr(scan_module.os, "walk", walk)
    again = index_folder(root, "p", tmp_path / "idx")
    assert again.removed == 0 and again.total == first.total and again.kept_unlisted == 3
    assert again.unlisted == [str(root / "red")]


def test_a_file_skipped_for_permission_is_indexed_once_readable(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    locked = sorted(root.rglob("*.jpg"))[0]
    real_open = file_work.os.open

    def refuse(path, *args, **kwargs):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(file_work.os, "open", refuse)
    first = index_folder(root, "p", tmp_path / "idx")
    assert first.skipped == 1 and "permission denied" in first.skipped_files[0][1]
    monkeypatch.setattr(file_work.os, "open", real_open)  # the permission is fixed; size and mtime are not
    again = index_folder(root, "p", tmp_path / "idx")
    assert (again.added, again.skipped, again.retried) == (1, 0, 1)


def test_the_writer_hands_out_values_not_its_store_or_catalogue():
    public = {name for name in dir(IndexWriter) if not name.startswith("_")}
    assert not public & {"catalogue", "store_"}, public
    assert "finish" in public  # finishing is a step the caller takes, not hidden in __exit__


def test_a_file_over_the_size_cap_is_indexed_once_the_cap_is_raised(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    biggest = max(root.rglob("*.jpg"), key=lambda p: p.stat().st_size)
    monkeypatch.setattr(file_work, "max_file_bytes", lambda: biggest.stat().st_size - 1)  # as $CBIR_MAX_FILE_MB would
    first = index_folder(root, "p", tmp_path / "idx")
    assert first.skipped >= 1 and any("MB, limit" in reason for _, reason in first.skipped_files)
    monkeypatch.undo()
    again = index_folder(root, "p", tmp_path / "idx")
    assert again.skipped == 0 and again.added == first.skipped
