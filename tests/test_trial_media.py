"""What a new user's trial found: videos in the duplicate review, reports that agree, videos counted as files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import cv2
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.images.video import frame_at
from cbir.retrieval.duplicates import find_duplicates
from cbir.retrieval.keepers import Candidate, ReviewGroup, files_not_kept
from cbir.store.catalogue import ImageFilter
from test_duplicates_review import shoot  # noqa: F401  (the fixture)
from test_video import write_video

runner = CliRunner()


def cbir(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def photos_with_a_copied_clip(tmp_path):
    """clip.mp4, its byte copy dups/clipcopy.mp4, and a photo that is the clip's frame at 6 s."""
    root = tmp_path / "photos"
    clip = write_video(root / "clip.mp4", 10)
    (root / "dups").mkdir()
    shutil.copyfile(clip, root / "dups" / "clipcopy.mp4")
    (root / "c7").mkdir()
    cv2.imwrite(str(root / "c7" / "700.png"), cv2.cvtColor(frame_at(clip, 6.0), cv2.COLOR_RGB2BGR))
    cbir("index", root, "--name", "trip", "--index-dir", tmp_path / "indexes")
    return root


def test_a_video_is_never_not_kept_because_a_frame_looks_like_a_photo(photos_with_a_copied_clip, tmp_path):
    root = photos_with_a_copied_clip
    found = find_duplicates("trip", 0.5, tmp_path / "indexes")
    assert [sorted(g.paths) for g in found.exact] == [[str(root / "clip.mp4"), str(root / "dups" / "clipcopy.mp4")]]
    assert not [g for g in found.near if any(c.time is not None for c in g.files)]  # stills only in the near tier
    nul = cbir("duplicates", "trip", "--index-dir", tmp_path / "indexes", "-t", "0.5", "--not-kept", "-0").stdout_bytes
    assert nul.rstrip(b"\0").split(b"\0") == [os.fsencode(root / "dups" / "clipcopy.mp4")]  # one copy kept


def test_a_review_sent_back_with_a_video_passed_over_in_a_near_group_keeps_it():
    photo = Candidate(1, "/p/700.jpg", 1000, 0, 64, 48, "P")
    frame = Candidate(2, "/p/clip.mp4", 9000, 0, 64, 48, "V", time=6.0)
    copy = Candidate(3, "/p/dups/clipcopy.mp4", 9000, 5, 64, 48, "V", time=0.0)
    exact = ReviewGroup.suggested("exact", [frame, copy])
    near = ReviewGroup.suggested("near", [photo, frame], 0.97).keeping(1)
    assert files_not_kept([exact, near]) == ["/p/dups/clipcopy.mp4"]


def test_text_csv_json_and_the_not_kept_list_say_the_same_of_every_file(shoot, tmp_path):  # noqa: F811
    # scene0.jpg and its byte copy are an exact group; the near group keeps scene0-big.png over them.
    common = ("duplicates", "shoot", "--index-dir", tmp_path / "indexes", "-t", "0.9")
    data = json.loads(cbir(*common, "--json").stdout)
    gone = set(data["not_kept"])
    exact = data["exact"][0]
    assert exact["keep"].endswith("/scene0.jpg") and [f["keep"] for f in exact["files"]] == [False, False]
    assert "near group 2" in exact["note"] and "scene0-big.png" in exact["note"] and data["near"][0]["note"] is None
    for group in data["exact"] + data["near"]:
        assert all(f["keep"] == (f["path"] not in gone) for f in group["files"])
    rows = list(csv.DictReader(io.StringIO(cbir(*common, "--csv").stdout)))
    assert all((r["keep"] == "yes") == (r["path"] not in gone) for r in rows)
    assert "near group 2 keeps another picture" in rows[1]["reason"]  # the exact keeper's row says why it goes too
    text = cbir(*common).stdout
    exact_text = text.split("exact group 1:")[1].split("near group 2:")[0]
    assert "unless its near group keeps another picture" in exact_text and "not kept after all" in exact_text
    assert "keep  " not in exact_text  # no file of the exact group is marked kept
    listed = set(os.fsdecode(p) for p in cbir(*common, "--not-kept", "-0").stdout_bytes.rstrip(b"\0").split(b"\0"))
    assert listed == gone


def test_prune_and_remove_count_a_video_once(photos_with_a_copied_clip, tmp_path):
    root, indexes = photos_with_a_copied_clip, tmp_path / "indexes"
    removed = cbir("remove", root / "dups" / "clipcopy.mp4", "--name", "trip", "--index-dir", indexes).stdout
    assert "removed 1 file (" in removed and " frames)" in removed and "removed 1 file (1 frames)" not in removed
    shutil.move(root / "clip.mp4", tmp_path / "clip.mp4")
    pruned = cbir("prune", "trip", "--index-dir", indexes)
    assert pruned.stdout.splitlines() == [str(root / "clip.mp4")] and "dropped 1 missing file(s)" in pruned.stderr


def test_an_uploaded_video_is_refused_as_the_cli_refuses_it(photos_with_a_copied_clip, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
    from fastapi.testclient import TestClient

    from cbir.server import create_app

    data = (photos_with_a_copied_clip / "clip.mp4").read_bytes()
    with TestClient(create_app(tmp_path / "indexes"), raise_server_exceptions=False) as client:
        answer = client.post("/api/indexes/trip/search", files={"file": ("holiday.bin", data, "application/octet-stream")})
    assert answer.status_code == 422 and "cannot query by a video" in answer.json()["error"] and "still taken from it" in answer.json()["error"]


def test_an_empty_camera_is_no_camera_filter():
    assert ImageFilter(camera="").is_empty and ImageFilter(camera="  ").camera is None
