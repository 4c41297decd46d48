"""Video files indexed as frames: which frames, found by a still, bounded, updated, and every command on a mixed folder.

Videos are written here with OpenCV's own FFmpeg writer (MPEG-4 part 2 in
MP4, small and quick), each frame painted from its time, so that what a
still taken at time t should find is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.compute import work
from cbir.compute.loader import Loader
from cbir.compute.work import CODEC_FIELDS, KnownContent
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.images.video import FrameSampling, format_time, frame_at, sample_frames
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.server.media import UnsatisfiableRange, byte_range
from cbir.store.catalogue import Catalogue
from conftest import make_collection

INTERVAL = 2.0


def painted(time_s: float, size=(64, 48)) -> np.ndarray:
    """The frame at ``time_s`` (BGR): a hue that turns with time, and a bar that moves, so nearby times look alike."""
    width, height = size
    hsv = np.zeros((height, width, 3), np.uint8)
    hsv[..., 0] = int(time_s * 15) % 180
    hsv[..., 1] = 200
    hsv[..., 2] = np.linspace(90, 250, width, dtype=np.uint8)[None, :]
    frame = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    x = int(time_s * 5) % width
    frame[:, x : x + 4] = 255
    return frame


def write_video(path: Path, seconds: float, fps: float = 10, size=(64, 48), paint=painted) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for n in range(int(round(seconds * fps))):
        writer.write(paint(n / fps, size))
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "media" / "clips" / "walk.mp4", 10)


@pytest.fixture
def mixed(tmp_path, clip) -> Path:
    """Photos of two kinds, the clip, and a photo that is a still of the clip at 5.3 s."""
    make_collection(tmp_path / "media", per_class=3)
    cv2.imwrite(str(tmp_path / "media" / "clips" / "still.png"), cv2.cvtColor(frame_at(clip, 5.3), cv2.COLOR_RGB2BGR))
    return tmp_path / "media"


def entries(index_dir: Path, name: str) -> list[tuple[str, float | None]]:
    with Catalogue(index_dir / name / "catalogue.sqlite", read_only=True) as catalogue:
        return [(row.path, row.time) for row in catalogue.image_rows()]


# -- which frames --------------------------------------------------------------------


def test_frames_every_interval_and_at_a_scene_change(tmp_path):
    def cut_at_3_5(time_s, size):
        return painted(0 if time_s < 3.5 else 100, size)  # one still scene, then another

    video = write_video(tmp_path / "cut.mp4", 8, paint=cut_at_3_5)
    times = [frame.time for frame in sample_frames(video, FrameSampling(interval=INTERVAL))]
    assert [t for t in times if t in (0.0, 2.0, 4.0, 6.0)] == [0.0, 2.0, 4.0, 6.0]  # the interval
    assert any(3.4 <= t <= 3.8 for t in times), times  # the cut, between two interval frames
    assert times == sorted(times) and len(times) == 5
    without = [frame.time for frame in sample_frames(video, FrameSampling(interval=INTERVAL, scenes=False))]
    assert without == [0.0, 2.0, 4.0, 6.0]


def test_a_ten_hour_video_gives_at_most_the_cap_spread_over_all_of_it(tmp_path):
    # Ten hours at one frame every 20 s (tiny and quick to write), sought rather than decoded through.
    video = write_video(tmp_path / "long.mp4", 10 * 3600, fps=0.05, size=(32, 32))
    frames = list(sample_frames(video, FrameSampling(max_frames=40)))
    assert len(frames) == 40
    assert frames[0].time == 0 and frames[-1].time > 9 * 3600  # the end is covered, not only the start
    assert len(list(sample_frames(video))) == FrameSampling().max_frames


def test_a_cap_set_low_bounds_the_entries_of_a_video(tmp_path, index_dir):
    write_video(tmp_path / "v" / "clip.mp4", 30)
    summary = index_folder(tmp_path / "v", "capped", index_dir, max_frames=5)
    times = [t for _, t in entries(index_dir, "capped")]
    assert len(times) == 5 and summary.frames == 5 and summary.videos == 1
    assert max(times) >= 20  # spread over the 30 s: one every 6 s


def test_a_new_index_fitting_a_pca_takes_the_frames_asked_for(tmp_path, index_dir):
    make_collection(tmp_path / "v", per_class=3)
    write_video(tmp_path / "v" / "clip.mp4", 30)
    # The PCA's sample is embedded first and committed as it is: with the run's frame setting, not the default.
    summary = index_folder(tmp_path / "v", "pca", index_dir, options={"pca": 4}, max_frames=3)
    assert summary.frames == 3 and [t for _, t in entries(index_dir, "pca") if t is not None] == [0.0, 10.0, 20.0]


def test_format_time():
    assert format_time(83.4) == "01:23" and format_time(0) == "00:00" and format_time(3723) == "1:02:03"


# -- indexed and found -----------------------------------------------------------------


def test_a_still_finds_the_frame_of_its_video_within_one_interval(tmp_path, clip, index_dir):
    photos = sum(map(len, make_collection(tmp_path / "media", per_class=2).values()))
    summary = index_folder(tmp_path / "media", "mixed", index_dir)
    assert summary.videos == 1 and summary.frames >= 5 and summary.total_videos == 1
    assert summary.added == photos + 1 and summary.total == photos + summary.frames  # files: the video counts once
    for t in (1.2, 5.3, 8.8):
        with Searcher.open("mixed", index_dir) as searcher:
            best = searcher.query(frame_at(clip, t), k=3).results[0]
        assert best.path == str(clip)
        assert abs(best.time - t) <= INTERVAL, (t, best.time)
        assert best.name == f"{clip} @ {format_time(best.time)}"
        assert best.to_dict()["time"] == best.time and best.to_dict()["path"] == str(clip)
    with Searcher.open("mixed", index_dir) as searcher:
        photo = [m for m in searcher.query(frame_at(clip, 1.2), k=30).results if m.time is None][0]
    assert "time" not in photo.to_dict()  # photos' JSON is as it was


def test_every_command_on_a_folder_of_photos_and_a_video(mixed, clip, index_dir, tmp_path):
    runner = CliRunner()

    def cbir(*args):
        result = runner.invoke(app, [*args, "--index-dir", str(index_dir)])
        assert result.exit_code == 0, result.output
        return result.output

    cbir("index", str(mixed), "--name", "mixed")
    text = cbir("query", str(mixed / "clips" / "still.png"), "--name", "mixed", "-k", "3")
    assert "walk.mp4 @ 00:0" in text
    body = json.loads(cbir("query", str(mixed / "clips" / "still.png"), "--name", "mixed", "-k", "3", "--json"))
    assert any(r["path"] == str(clip) and isinstance(r["time"], float) for r in body["results"])
    info = json.loads(cbir("info", "mixed", "--json"))
    assert info["videos"] == 1 and info["frames"] >= 5 and info["images"] == 3 * 3 + 1 + info["frames"]
    cbir("list")
    # The still and the clip's frame near 5.3 s look alike, but a video and a photo are different media:
    # the clip is in no near group (docs/duplicates.md), so it is never "not kept" for a frame's likeness.
    found = json.loads(cbir("duplicates", "mixed", "--threshold", "0.9", "--json"))
    assert not [g for g in found["exact"] if str(clip) in g["paths"]]  # its frames share its hash: one file, no copies
    assert not [g for g in found["near"] if str(clip) in g["paths"]] and str(clip) not in found["not_kept"]
    files = [f for g in found["near"] + found["exact"] for f in g["files"]]
    assert all("time" not in f for f in files)
    cbir("query", str(mixed / "clips" / "still.png"), "--name", "mixed", "--montage", str(tmp_path / "m.png"))
    cbir("query", str(mixed / "clips" / "still.png"), "--name", "mixed", "--html", str(tmp_path / "g.html"))
    page = (tmp_path / "g.html").read_text()
    assert "walk.mp4 @ 00:0" in page and "walk.mp4#t=" in page
    cbir("evaluate", "mixed")
    # A query by the video itself: one clear line.
    refused = runner.invoke(app, ["query", str(clip), "--name", "mixed", "--index-dir", str(index_dir)])
    assert refused.exit_code != 0 and "cannot query by a video" in refused.output
    # remove and prune take all of a video's frames.
    cbir("remove", str(clip), "--name", "mixed")
    assert not [e for e in entries(index_dir, "mixed") if e[1] is not None]
    cbir("index", str(mixed), "--name", "mixed", "--include-removed")
    assert [e for e in entries(index_dir, "mixed") if e[1] is not None]
    clip.unlink()
    cbir("prune", "mixed")
    assert entries(index_dir, "mixed") and not [e for e in entries(index_dir, "mixed") if e[1] is not None]


def test_a_corrupt_video_is_one_warning_line_and_the_rest_is_indexed(tmp_path, index_dir):
    folder = tmp_path / "media"
    photos = sum(map(len, make_collection(folder, per_class=2).values()))
    good = write_video(folder / "clips" / "good.mp4", 4)
    (folder / "clips" / "junk.mp4").write_bytes(os.urandom(20_000))
    (folder / "clips" / "cut.mp4").write_bytes(good.read_bytes()[:1500])  # no frame left to decode
    done = subprocess.run(
        [sys.executable, "-m", "cbir", "index", str(folder), "--name", "m", "--index-dir", str(index_dir)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len([line for line in lines if "junk.mp4" in line]) == 1
    assert len([line for line in lines if "cut.mp4" in line]) == 1
    assert len(lines) == 2, lines  # nothing of FFmpeg's or OpenCV's own
    paths = {path for path, _ in entries(index_dir, "m")}
    assert str(good) in paths and len(paths) == photos + 1


def test_a_version_3_catalogue_is_read_as_it_is_and_a_writer_upgrades_it(tmp_path):
    import sqlite3

    from cbir.store.catalogue import MIGRATIONS, SCHEMA_VERSION, NewImage

    path = tmp_path / "catalogue.sqlite"
    db = sqlite3.connect(path)
    db.executescript("".join(m + ";" for m in MIGRATIONS[:3]) + "PRAGMA user_version = 3;")
    db.execute("INSERT INTO images (path, size, mtime_ns, sha256, label, vector) VALUES ('/a/x.jpg', 1, 2, 'ab', NULL, ?)", (np.ones(4, np.float32).tobytes(),))
    db.commit()
    db.close()
    with Catalogue(path, read_only=True) as catalogue:  # before videos: read without upgrading
        assert [(r.path, r.time) for r in catalogue.image_rows()] == [("/a/x.jpg", None)]
        assert catalogue.video_counts() == (0, 0) and catalogue.image_folders() == ["/a/"]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3
    with Catalogue(path) as catalogue:
        with catalogue.transaction():
            frames = [NewImage("/a/v.mp4", 5, 6, "cd", None, np.ones(4), time=t) for t in (0.0, 2.0)]
            catalogue.add_images(frames, 4)
        assert catalogue.video_counts() == (1, 2) and sorted(catalogue.image_folders()) == ["/a/"]
        assert [(r.path, r.time) for r in catalogue.images_under("/a/v.mp4").values()] == [("/a/v.mp4", 0.0), ("/a/v.mp4", 2.0)]
        with catalogue.transaction():  # a video's new frames replace all of its old ones
            catalogue.add_images([NewImage("/a/v.mp4", 7, 8, "ef", None, np.ones(4), time=1.0)], 4)
        assert [(r.path, r.time, r.size) for r in catalogue.image_rows()] == [("/a/x.jpg", None, 1), ("/a/v.mp4", 1.0, 7)]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# -- updates ---------------------------------------------------------------------------


def test_an_unchanged_video_is_not_decoded_again_and_a_changed_one_replaces_all_its_frames(tmp_path, clip, index_dir, monkeypatch):
    folder = clip.parent
    index_folder(folder, "up", index_dir, workers=1)
    before = entries(index_dir, "up")
    decoded = []
    real = work.sample_frames
    monkeypatch.setattr(work, "sample_frames", lambda path, *a, **k: (decoded.append(path), real(path, *a, **k))[1])
    summary = index_folder(folder, "up", index_dir, workers=1)
    os.utime(clip, ns=(clip.stat().st_mtime_ns + 10**9,) * 2)  # touched, same content: hashed, not decoded
    touched = index_folder(folder, "up", index_dir, workers=1)
    assert decoded == [] and summary.unchanged == 1 and touched.unchanged == 1
    with Catalogue(index_dir / "up" / "catalogue.sqlite", read_only=True) as catalogue:  # every frame restamped
        assert {row.mtime_ns for row in catalogue.image_rows()} == {clip.stat().st_mtime_ns}
    assert [t for _, t in entries(index_dir, "up")] == [t for _, t in before]
    write_video(clip, 4)  # shorter: fewer frames, all new
    changed = index_folder(folder, "up", index_dir, workers=1)
    assert decoded == [clip] and changed.updated == 1
    after = entries(index_dir, "up")
    assert max(t for _, t in after) < 4 < max(t for _, t in before)
    assert len(after) == len({t for _, t in after}) == changed.frames


def test_a_copied_video_reuses_all_the_stored_frames(tmp_path, clip, index_dir):
    index_folder(clip.parent, "copy", index_dir)
    (clip.parent / "again.mp4").write_bytes(clip.read_bytes())
    summary = index_folder(clip.parent, "copy", index_dir)
    rows = entries(index_dir, "copy")
    original = sorted(t for p, t in rows if p == str(clip))
    assert sorted(t for p, t in rows if p.endswith("again.mp4")) == original
    assert summary.reused == len(original) and summary.embedded == 0


# -- one pipeline -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_backend():
    ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'cbir[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed")
    import logging

    from cbir.compute.ray_cluster import RayRunner

    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield RayRunner.connect()
    ray.shutdown()


def test_every_backend_gives_the_same_frames(tmp_path, clip, request):
    photos = sorted(p for group in make_collection(tmp_path / "p", per_class=2).values() for p in group)
    second = write_video(tmp_path / "p" / "b.mkv", 6)
    bad = tmp_path / "p" / "bad.webm"
    bad.write_bytes(b"not a video" * 100)
    files = [photos[0], clip, photos[1], second, bad, *photos[2:]]
    embedder = Embedder(make_extractor("color", bins=[4, 4, 2]))
    loaders = {
        "this process": Loader(1, explicit=True, batch_size=3),
        "threads": Loader(2, explicit=False, batch_size=3),
        "processes": Loader(2, explicit=True, batch_size=3),
    }
    try:
        loaders["ray"] = Loader(2, explicit=True, batch_size=3, ray=request.getfixturevalue("ray_backend"))
    except pytest.skip.Exception:
        pass
    results = {}
    for name, loader in loaders.items():
        records = []
        for batch in loader.embed_batches(files, embedder, {}, KnownContent.from_hashes([]), video={"interval": 1.5, "max_frames": 6, "scenes": True}):
            # A batch never ends inside a video: its frames are committed together.
            assert not batch.embedded or not batch.embedded[-1].more_frames
            records += [(str(f.path), f.fields(), v.tobytes()) for f, v in zip(batch.embedded, batch.vectors)]
            records += [(str(f.path), f.fields(), None) for f in batch.not_embedded]
        results[name] = sorted(records, key=lambda r: (r[0], r[1][CODEC_FIELDS.index("frame_time")]))
    reference = results["this process"]
    frames = [r for r in reference if r[1][CODEC_FIELDS.index("frame_time")] >= 0]
    assert len([r for r in frames if r[0] == str(clip)]) == 6  # 10 s at 1.5 s, capped at 6
    assert [r for r in reference if r[0] == str(bad)][0][1][CODEC_FIELDS.index("error")]
    for name, records in results.items():
        assert records == reference, name


# -- served -------------------------------------------------------------------------------


def test_byte_ranges():
    assert byte_range(None, 100) is None and byte_range("bytes=0-", 100) == (0, 99)
    assert byte_range("bytes=10-19", 100) == (10, 19) and byte_range("bytes=-5", 100) == (95, 99)
    assert byte_range("bytes=90-500", 100) == (90, 99) and byte_range("bytes=1-2,5-6", 100) is None
    with pytest.raises(UnsatisfiableRange):
        byte_range("bytes=100-", 100)


def test_served_frames_thumbnails_and_ranges(mixed, clip, index_dir):
    pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
    from fastapi.testclient import TestClient

    from cbir.server import create_app

    index_folder(mixed, "mixed", index_dir)
    with TestClient(create_app(index_dir, refresh_interval=0), raise_server_exceptions=False) as client:
        still = (mixed / "clips" / "still.png").read_bytes()
        body = client.post("/api/indexes/mixed/search?k=20", files={"file": ("q.png", still, "image/png")}).json()
        frame = next(r for r in body["results"] if r.get("time") is not None)
        photo = next(r for r in body["results"] if r.get("time") is None)
        assert "time" not in photo
        thumb = client.get(frame["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        shown = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
        expected = cv2.cvtColor(frame_at(clip, frame["time"]), cv2.COLOR_RGB2BGR)
        assert shown is not None and np.abs(cv2.resize(shown, expected.shape[1::-1]).astype(int) - expected).mean() < 12
        whole = client.get(frame["image_url"])
        assert whole.content == clip.read_bytes() and whole.headers["accept-ranges"] == "bytes"
        part = client.get(frame["image_url"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == clip.read_bytes()[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{clip.stat().st_size}"
        assert client.get(frame["image_url"], headers={"Range": "bytes=99999999-"}).status_code == 416
        # More like a frame: the query is named with its time.
        again = client.post("/api/indexes/mixed/search", json={"id": frame["id"], "k": 3}).json()
        assert again["query"].endswith(f"walk.mp4 @ {format_time(frame['time'])}")
        # Browsing lists a video's frames in time order, each with its time.
        listed = client.get("/api/indexes/mixed/images?limit=100").json()["results"]
        times = [r["time"] for r in listed if r["path"] == str(clip)]
        assert times and times == sorted(times) and all("time" not in r for r in listed if r["path"] != str(clip))


def test_the_page_plays_a_frames_video_from_its_time(tmp_path, index_dir):
    """A browser: a frame's tile names its time, and "Play from" plays the video there (a WebM: Chromium's codec)."""
    from test_server_live import Server, _answered, _browser

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = tmp_path / "media"
    make_collection(folder, per_class=2)
    video = folder / "clips" / "walk.webm"
    video.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(video), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"VP80"), 10, (160, 120))
    for n in range(100):
        writer.write(painted(n / 10, (160, 120)))
    writer.release()
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), cv2.cvtColor(frame_at(video, 6.3), cv2.COLOR_RGB2BGR))
    index_folder(folder, "media", index_dir)
    server = Server(index_dir)
    browser = _browser()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(server.url + "/")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#index option"))
        browser.find_element(By.ID, "file").send_keys(str(still))
        # The page lists the index before a query; the search's answer names the query in the status line.
        wait.until(lambda b: _answered(b, "still.png") and b.find_elements(By.CSS_SELECTOR, "#results .result"))
        first = browser.find_element(By.CSS_SELECTOR, "#results .result")
        name = first.find_element(By.CSS_SELECTOR, ".name").text
        assert name.startswith("walk.webm @ 00:0"), name
        shown = int(name[-2:])
        assert abs(shown - 6.3) <= INTERVAL + 1
        wait.until(lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        out = Path(os.environ.get("CBIR_SCREENSHOTS", tmp_path))
        link = first.find_element(By.CSS_SELECTOR, ".open")
        assert link.text.startswith("Play from 00:0")
        link.click()
        # Played from the frame's time: the server answered the range requests it seeks with.
        wait.until(lambda b: b.execute_script("const v = document.querySelector('#results video'); return v && v.readyState >= 2"))
        position = browser.execute_script("return document.querySelector('#results video').currentTime")
        assert shown - 1 <= position <= shown + 3, position
        browser.save_screenshot(str(out / "cbir-video-desktop.png"))
        browser.set_window_size(390, 844)
        wait.until(lambda b: b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
        browser.save_screenshot(str(out / "cbir-video-phone.png"))
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()
        server.stop()
