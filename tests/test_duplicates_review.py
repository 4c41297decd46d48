"""Duplicates you can act on: the exact tier, the suggested keeper and its reason, a person's choice, the exports."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.indexing.run import index_folder
from cbir.retrieval.duplicates import find_duplicates
from cbir.retrieval.keepers import CHOSEN_BY_PERSON, Candidate, ReviewGroup, choose_keeper, files_not_kept, review_csv
from cbir.retrieval.thresholds import DEFAULT_THRESHOLDS, default_threshold

runner = CliRunner()


def candidate(n, path, size=1000, width=100, height=80, mtime=0, sha=None):
    return Candidate(n, path, size, mtime, width, height, sha or f"hash-{n}")


# -- the keeper rule: a pure function ------------------------------------------------
def test_keeper_is_the_highest_resolution_then_largest_file_then_preferred_format():
    small_big_file = candidate(1, "/p/a.jpg", size=9000, width=100, height=80)
    large = candidate(2, "/p/b.jpg", size=5000, width=200, height=160)
    assert choose_keeper([small_big_file, large]) == (1, "highest resolution: 200x160 (next 100x80)")
    q95, q70 = candidate(1, "/p/q95.jpg", size=9000), candidate(2, "/p/q70.jpg", size=4000)
    position, reason = choose_keeper([q70, q95])
    assert position == 1 and reason.startswith("largest file at the same resolution: 9.0 kB")
    jpeg, png, raw = candidate(1, "/p/x.jpg"), candidate(2, "/p/x.png"), candidate(3, "/p/x.NEF")
    assert choose_keeper([jpeg, png]) == (1, "preferred format at the same resolution and size: lossless over JPEG")
    assert choose_keeper([png, raw, jpeg])[0] == 1
    unknown = candidate(4, "/p/y.png", width=None, height=None, size=10**6)
    assert choose_keeper([unknown, jpeg])[0] == 1  # a known resolution beats an unknown one


def test_alike_copies_keep_the_oldest_then_the_shortest_path():
    original, copy = candidate(1, "/p/IMG_1.jpg", mtime=10, sha="s"), candidate(2, "/p/IMG_1 (1).jpg", mtime=20, sha="s")
    assert choose_keeper([copy, original]) == (1, "alike in resolution, size and format: the oldest file")
    original = candidate(1, "/p/IMG_1.jpg", mtime=20, sha="s")
    assert choose_keeper([copy, original]) == (1, "alike in resolution, size, format and date: the shortest path")


def test_a_persons_choice_changes_the_files_not_kept_and_every_content_keeps_a_file():
    a, a_copy = candidate(1, "/p/a.jpg", sha="A"), candidate(2, "/q/a.jpg", sha="A", mtime=5)
    b = candidate(3, "/p/b.jpg", width=50, height=40, sha="B")
    exact = ReviewGroup.suggested("exact", [a, a_copy])
    near = ReviewGroup.suggested("near", [a, b], 0.97)  # a stands for both copies
    assert exact.kept == a and near.kept == a
    assert files_not_kept([exact, near]) == ["/q/a.jpg", "/p/b.jpg"]
    # Keeping b in the near group lets the content of a go, both copies of it.
    chosen = near.keeping(3)
    assert chosen.reason == CHOSEN_BY_PERSON
    assert sorted(files_not_kept([exact, chosen])) == ["/p/a.jpg", "/q/a.jpg"]
    # Keeping the other copy in the exact group: a goes, its copy stays.
    assert sorted(files_not_kept([exact.keeping(2), near])) == ["/p/a.jpg", "/p/b.jpg"]
    rows = list(csv.DictReader(io.StringIO(review_csv([exact.keeping(2), near]))))
    assert [(r["path"], r["keep"]) for r in rows] == [("/p/a.jpg", "no"), ("/q/a.jpg", "yes"), ("/p/a.jpg", "no"), ("/p/b.jpg", "no")]
    assert rows[1]["reason"] == CHOSEN_BY_PERSON
    with pytest.raises(ValueError):
        near.keeping(99)


def test_each_extractor_has_its_own_measured_default_threshold():
    assert default_threshold({"embedder": {"extractor": {"name": "color"}}}) == (DEFAULT_THRESHOLDS["color"], "default for color")
    assert default_threshold({"embedder": {"extractor": {"name": "cnn"}}})[0] == DEFAULT_THRESHOLDS["cnn"]
    assert DEFAULT_THRESHOLDS["color"] != DEFAULT_THRESHOLDS["cnn"]  # one number means different things
    assert "not measured" in default_threshold({"embedder": {"extractor": {"name": "new"}}})[1]


# -- an index with both tiers ----------------------------------------------------------
def scene(seed: int) -> np.ndarray:
    """A photo-like picture: smooth colour gradients with a few blobs, unlike every other seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC), (0, 0), 6)


@pytest.fixture
def shoot(tmp_path):
    """Five distinct scenes; scene 0 also as a byte-identical copy, a half-size JPEG and a PNG."""
    root = tmp_path / "shoot"
    (root / "backup").mkdir(parents=True)
    for n in range(5):
        cv2.imwrite(str(root / f"scene{n}.jpg"), scene(n), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "backup" / "scene0.jpg").write_bytes((root / "scene0.jpg").read_bytes())
    os.utime(root / "backup" / "scene0.jpg", ns=(2_000_000_000 * 10**9,) * 2)  # copied later
    cv2.imwrite(str(root / "scene0-small.jpg"), cv2.resize(scene(0), (160, 120), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(root / "scene0-big.png"), cv2.resize(scene(0), (640, 480), interpolation=cv2.INTER_CUBIC))
    index_folder(root, "shoot", tmp_path / "indexes")
    return root


def test_exact_copies_are_a_tier_of_their_own_and_near_groups_hold_each_content_once(shoot, tmp_path):
    found = find_duplicates("shoot", 0.9, tmp_path / "indexes")
    assert [g.paths for g in found.exact] == [[str(shoot / "backup" / "scene0.jpg"), str(shoot / "scene0.jpg")]]
    assert found.exact[0].kept.path == str(shoot / "scene0.jpg")  # the older file
    assert [sorted(Path(p).name for p in g.paths) for g in found.near] == [["scene0-big.png", "scene0-small.jpg", "scene0.jpg"]]
    assert found.near[0].kept.path == str(shoot / "scene0-big.png") and found.near[0].reason.startswith("highest resolution: 640x480")
    assert sorted(found.not_kept()) == sorted(str(shoot / p) for p in ("backup/scene0.jpg", "scene0-small.jpg", "scene0.jpg"))
    exact_only = find_duplicates("shoot", index_dir=tmp_path / "indexes", near=False)
    assert exact_only.near == [] and len(exact_only.exact) == 1 and exact_only.threshold is None
    default = find_duplicates("shoot", index_dir=tmp_path / "indexes")
    assert (default.threshold, default.threshold_source) == (DEFAULT_THRESHOLDS["color"], "default for color")


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_cli_reports_both_tiers_with_keepers_as_text_json_csv_and_a_nul_list(shoot, tmp_path):
    common = ("shoot", "--index-dir", tmp_path / "indexes", "-t", "0.9")
    text = run("duplicates", *common).stdout
    assert "exact copies (the same bytes): 1 group(s)" in text and "near-duplicates at similarity >= 0.9 (given): 1 group(s)" in text
    assert f"keep {shoot / 'scene0-big.png'} (highest resolution" in text
    data = json.loads(run("duplicates", *common, "--json").stdout)
    assert data["threshold"] == 0.9 and [g["tier"] for g in data["exact"] + data["near"]] == ["exact", "near"]
    assert data["near"][0]["keep"] == str(shoot / "scene0-big.png") and data["near"][0]["reason"].startswith("highest resolution")
    # The exact group's choice, scene0.jpg, goes after all: the near group keeps scene0-big.png over its content.
    assert data["exact"][0]["keep"] == str(shoot / "scene0.jpg") and [f["keep"] for f in data["exact"][0]["files"]] == [False, False]
    rows = list(csv.DictReader(io.StringIO(run("duplicates", *common, "--csv").stdout)))
    assert [(Path(r["path"]).name, r["tier"], r["keep"]) for r in rows][-3:] == [
        ("scene0-big.png", "near", "yes"), ("scene0-small.jpg", "near", "no"), ("scene0.jpg", "near", "no")
    ]
    nul = run("duplicates", *common, "--not-kept", "-0").stdout_bytes
    assert nul.endswith(b"\0") and sorted(nul.rstrip(b"\0").split(b"\0")) == sorted(os.fsencode(p) for p in data["not_kept"])
    assert all(Path(os.fsdecode(p)).exists() for p in nul.rstrip(b"\0").split(b"\0"))  # listed, never touched
    exact = json.loads(run("duplicates", "shoot", "--index-dir", tmp_path / "indexes", "--exact", "--json").stdout)
    assert exact["near"] == [] and exact["threshold"] is None
    for bad, message in ((("--json", "--csv"), "choose one of"), (("-0",), "-0 goes with --not-kept")):
        result = runner.invoke(app, ["duplicates", *map(str, common), *bad])
        assert result.exit_code != 0 and message in result.stderr


def test_threshold_help_says_what_the_default_means():
    raw = runner.invoke(app, ["duplicates", "--help"], env={"COLUMNS": "400"}).stdout
    text = " ".join(raw.replace("│", " ").split())
    assert "pairs of distinct" in text and "every extractor" in text and "never deletes" in text
