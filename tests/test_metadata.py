"""Photo metadata: read once at index time, kept in the catalogue, shown by info and query; GPS kept private."""

from __future__ import annotations

import datetime
import json
import os
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.compute.work import load_file
from cbir.images.metadata import jpeg_exif_segment
from cbir.indexing.run import index_folder
from cbir.store.catalogue import MIGRATIONS, SCHEMA_VERSION, Catalogue, ImageMetadata, NewImage
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path

from conftest import make_collection
from photo_files import exif_bytes, write_heic, write_jpeg

runner = CliRunner()


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=1)
    exif = exif_bytes(make="Canon", model="Canon EOS R5", taken="2021:06:05 14:03:09", gps=(48.8584, -2.2945), orientation=6)
    shot = write_jpeg(root / "shot.jpg", picture(1), exif=exif)
    phone = write_heic(root / "phone.heic", picture(2), exif=exif_bytes(make="Apple", model="iPhone 15", taken="2023:07:14 10:20:30"))
    return root, shot, phone


def test_exif_is_read_from_the_bytes_already_read(photos):
    _, shot, phone = photos
    loaded = load_file(shot, min_side=16)
    assert (loaded.taken, loaded.camera_make, loaded.camera_model) == ("2021-06-05T14:03:09", "Canon", "Canon EOS R5")
    assert (loaded.width, loaded.height) == (64, 96)  # as displayed: orientation 6 turns 96x64 upright
    lat, lon = map(float, loaded.gps.split(","))
    assert lat == pytest.approx(48.8584, abs=1e-4) and lon == pytest.approx(-2.2945, abs=1e-4)
    heic = load_file(phone)
    assert (heic.taken, heic.camera_model, heic.width, heic.height) == ("2023-07-14T10:20:30", "iPhone 15", 96, 64)


def test_metadata_is_stored_dates_fall_back_to_the_file_time_and_gps_stays_private(photos, index_dir):
    root, shot, phone = photos
    plain = root / "red" / "red-0.jpg"
    os.utime(plain, (1_600_000_000, 1_600_000_000))
    index_folder(root, "m", index_dir)
    with IndexStore.open(index_path("m", index_dir)) as store:
        ids = {row.path: row.id for row in store.catalogue.image_rows()}
        public = store.catalogue.metadata(list(ids.values()))
        private = store.catalogue.metadata([ids[str(shot)]], gps=True)[ids[str(shot)]]
        counts = store.catalogue.metadata_counts()
    assert public[ids[str(shot)]].camera == "Canon EOS R5" and public[ids[str(shot)]].gps_lat is None
    assert private.gps_lat == pytest.approx(48.8584, abs=1e-4)
    fallback = public[ids[str(plain)]]
    assert fallback.taken_from == "mtime" and fallback.taken == datetime.datetime.fromtimestamp(1_600_000_000).isoformat()
    assert counts == {"with_metadata": len(ids), "dated_by_exif": 2, "with_camera": 2, "with_location": 1}

    data = json.loads(runner.invoke(app, ["query", str(shot), "--name", "m", "--index-dir", str(index_dir), "-k", "1", "--json"]).stdout)
    first = data["results"][0]
    assert (first["taken"], first["camera"]) == ("2021-06-05T14:03:09", "Canon EOS R5")
    assert "48.85" not in json.dumps(data) and "gps" not in json.dumps(data)
    text = runner.invoke(app, ["query", str(phone), "--name", "m", "--index-dir", str(index_dir), "-k", "1"]).stdout
    assert f"[2023-07-14 10:20:30  Apple iPhone 15]  {phone}" in text
    info = runner.invoke(app, ["info", "m", "--index-dir", str(index_dir)]).stdout
    assert f"metadata    {len(ids)} of {len(ids)} images: 2 dated by EXIF ({len(ids) - 2} by file time), 2 with a camera, 1 with a location" in info


def test_a_moved_photo_keeps_its_metadata_without_being_decoded(photos, index_dir):
    root, shot, _ = photos
    index_folder(root, "m", index_dir)
    moved = root / "moved.jpg"
    shot.rename(moved)
    summary = index_folder(root, "m", index_dir)
    assert summary.reused == 1
    with IndexStore.open(index_path("m", index_dir)) as store:
        row = store.catalogue.row_for_path(str(moved))
        assert store.catalogue.metadata([row.id])[row.id].camera == "Canon EOS R5"


def test_a_version_1_catalogue_migrates_and_keeps_its_rows(tmp_path):
    path = tmp_path / "catalogue.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    vector = np.ones(4, np.float32).tobytes()
    db.execute("INSERT INTO images (path, size, mtime_ns, sha256, label, vector) VALUES ('/a.jpg', 1, 2, 'ab', NULL, ?)", (vector,))
    db.commit()
    db.close()
    with Catalogue(path) as catalogue:
        assert catalogue.count_images() == 1 and catalogue.metadata([1]) == {}
        assert catalogue.metadata_counts()["with_metadata"] == 0
        with catalogue.transaction():
            catalogue.add_images([NewImage("/b.jpg", 1, 2, "cd", None, np.ones(4), ImageMetadata(10, 20, "2020-01-01T00:00:00", "exif"))], 4)
        new_id = catalogue.row_for_path("/b.jpg").id
        assert catalogue.metadata([new_id])[new_id].width == 10
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_jpeg_without_exif_costs_only_a_marker_walk():
    import cv2

    data = cv2.imencode(".jpg", picture(3))[1].tobytes()
    assert jpeg_exif_segment(data) is None
    with_exif = b"\xff\xd8" + b"\xff\xe1" + (len(b"Exif\x00\x00II*\x00") + 2).to_bytes(2, "big") + b"Exif\x00\x00II*\x00" + data[2:]
    assert jpeg_exif_segment(with_exif) == b"II*\x00"


def test_a_version_1_catalogue_is_read_as_it_is_by_a_reader(tmp_path):
    # An index built before photo metadata existed: queries and the server read it without upgrading it.
    path = tmp_path / "catalogue.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO images (path, size, mtime_ns, sha256, label, vector) VALUES ('/a.jpg', 1, 2, 'ab', NULL, ?)", (np.ones(4, np.float32).tobytes(),))
    db.commit()
    db.close()
    with Catalogue(path, read_only=True) as catalogue:
        assert catalogue.count_images() == 1 and catalogue.metadata([1]) == {}
        assert catalogue.metadata_counts()["with_metadata"] == 0
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 1
