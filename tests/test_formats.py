"""HEIC, AVIF and camera RAW: indexed, found by themselves, oriented, bounded; without the extra, one line naming it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.errors import ImageError
from cbir.images import decode
from cbir.images.decode import decode_file, decode_image, read_image
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore
from cbir.store.locations import index_path

from conftest import make_collection
from photo_files import HALVES, exif_bytes, write_avif, write_dng, write_heic, write_jpeg

runner = CliRunner()


def photo(seed: int, size=(120, 180)) -> np.ndarray:
    """A picture unlike the collection's flat colours: its own histogram."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((size[0] // 6, size[1] // 9, 1), np.uint8)))


def red_on_top(rgb: np.ndarray) -> bool:
    """HALVES turned a quarter clockwise (EXIF orientation 6): red above, blue below."""
    top, bottom = rgb[: rgb.shape[0] // 4].reshape(-1, 3).mean(0), rgb[-rgb.shape[0] // 4 :].reshape(-1, 3).mean(0)
    return rgb.shape[0] > rgb.shape[1] and top[0] > top[2] + 80 and bottom[2] > bottom[0] + 80


@pytest.mark.parametrize("kind", ["heic", "avif", "dng"])
def test_each_format_is_indexed_and_found_first_by_itself(tmp_path, index_dir, kind):
    root = tmp_path / "photos"
    collection = make_collection(root, per_class=3)
    writers = {"heic": write_heic, "avif": write_avif, "dng": write_dng}
    path = writers[kind](root / f"phone.{kind}", photo(7))
    summary = index_folder(root, "p", index_dir)
    assert summary.skipped == 0 and summary.added == sum(map(len, collection.values())) + 1
    with Searcher.open("p", index_dir) as searcher:
        assert searcher.query(path, k=1).results[0].path == str(path)


@pytest.mark.parametrize("kind", ["heic", "avif", "dng"])
def test_orientation_is_honoured(tmp_path, kind):
    if kind == "heic":
        path = write_heic(tmp_path / "o.heic", HALVES, exif=exif_bytes(orientation=6))
    elif kind == "avif":
        path = write_avif(tmp_path / "o.avif", HALVES, exif=exif_bytes(orientation=6))
    else:
        path = write_dng(tmp_path / "o.dng", np.kron(HALVES, np.ones((4, 4, 1), np.uint8)), orientation=6)
    assert red_on_top(read_image(path))


def test_a_raw_preview_is_turned_as_the_raw_says(tmp_path):
    big = np.kron(HALVES, np.ones((4, 4, 1), np.uint8))
    path = write_dng(tmp_path / "p.dng", big, orientation=6, preview=big)
    found = decode_file(path.read_bytes(), ".dng", min_side=100)
    assert found.source == "preview" and red_on_top(found.image)


def test_a_heic_thumbnail_is_decoded_when_large_enough(tmp_path):
    path = write_heic(tmp_path / "t.heic", photo(3, size=(600, 900)), thumbnails=[300])
    data = path.read_bytes()
    assert decode_image(data).shape[:2] == (600, 900)
    assert decode_image(data, min_side=150).shape[:2] == (200, 300)  # the 300-pixel thumbnail
    assert decode_image(data, min_side=400).shape[:2] == (600, 900)  # too small for that: the image


def test_the_pixel_cap_refuses_heic_and_raw_before_decoding(tmp_path):
    heic = write_heic(tmp_path / "big.heic", photo(1)).read_bytes()
    dng = write_dng(tmp_path / "big.dng", photo(2)).read_bytes()
    with pytest.raises(ImageError, match="too large"):
        decode_image(heic, max_pixels=1000)
    with pytest.raises(ImageError, match="too large"):
        decode_file(dng, ".dng", max_pixels=1000)


def test_raw_sources_sidecar_preview_demosaiced_and_one_entry_per_photo(tmp_path, index_dir):
    root = tmp_path / "camera"
    root.mkdir()
    write_dng(root / "IMG_1.dng", photo(1))  # nothing embedded: demosaiced
    write_dng(root / "IMG_2.dng", photo(2, size=(240, 360)), preview=photo(2, size=(240, 360)))
    write_dng(root / "IMG_3.DNG", photo(3))
    write_jpeg(root / "IMG_3.JPG", photo(3))  # the camera's own JPEG: indexed instead of its RAW
    summary = index_folder(root, "cam", index_dir)
    assert summary.raw_sources == {"sidecar": 1, "preview": 1, "demosaiced": 1}
    assert summary.total == 3 and summary.skipped == 0
    with IndexStore.open(index_path("cam", index_dir)) as store:
        paths = sorted(row.path.rsplit("/", 1)[1] for row in store.catalogue.image_rows())
    assert paths == ["IMG_1.dng", "IMG_2.dng", "IMG_3.JPG"]
    result = runner.invoke(app, ["index", str(root), "--name", "cam2", "--index-dir", str(index_dir)])
    assert "RAW files: 1 via their JPEG sidecar, 1 embedded preview, 1 demosaiced at half size" in result.stdout


def test_bad_heic_and_raw_are_one_skip_reason_each(tmp_path, index_dir, caplog):
    root = tmp_path / "mixed"
    make_collection(root, per_class=1)
    whole = write_heic(tmp_path / "whole.heic", photo(5)).read_bytes()
    (root / "cut.heic").write_bytes(whole[: len(whole) // 2])
    (root / "odd.cr2").write_bytes(b"II*\x00" + bytes(200))  # TIFF-like, not a RAW LibRaw knows
    summary = index_folder(root, "m", index_dir)
    reasons = dict((p.rsplit("/", 1)[1], r) for p, r in summary.skipped_files)
    assert set(reasons) == {"cut.heic", "odd.cr2"}
    assert reasons["cut.heic"].startswith("cannot decode HEIF") and "\n" not in reasons["cut.heic"]
    assert reasons["odd.cr2"] == "not a RAW file LibRaw can read"
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]
    assert len(warnings) == 2


def test_without_the_extra_heic_and_raw_are_counted_naming_it(tmp_path, index_dir, monkeypatch):
    root = tmp_path / "phone"
    make_collection(root, per_class=1)
    heic = write_heic(root / "IMG_1.HEIC", photo(1))
    write_dng(root / "IMG_2.dng", photo(2))
    (root / "IMG_3.jxl").write_bytes(b"\xff\x0a")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "rawpy", None)
    result = runner.invoke(app, ["index", str(root), "--name", "p", "--index-dir", str(index_dir)])
    assert result.exit_code == 0 and "Traceback" not in result.stdout + result.stderr
    line = [line for line in result.stdout.splitlines() if line.startswith("not indexed")]
    assert line == [
        "not indexed: 2 file(s) of a format cbir cannot read without pip install 'cbir[formats]' (1 .dng, 1 .heic); "
        "files of formats cbir cannot read: 1 .jxl"
    ]
    data = json.loads(runner.invoke(app, ["index", str(root), "--name", "p", "--index-dir", str(index_dir), "--json"]).stdout)
    assert data["needs_formats_extra"] == {".dng": 1, ".heic": 1}
    # Bytes from elsewhere (a query, an upload): one error line naming the extra.
    with pytest.raises(ImageError, match=r"pip install 'cbir\[formats\]'"):
        decode_image(heic.read_bytes())
    query = runner.invoke(app, ["query", str(heic), "--name", "p", "--index-dir", str(index_dir)])
    lines = [line for line in query.stderr.splitlines() if line.strip()]
    assert query.exit_code != 0 and len(lines) == 1 and "cbir[formats]" in lines[0] and lines[0].startswith("error: ")


def test_heic_and_avif_bytes_are_recognised_without_a_suffix(tmp_path):
    heic = write_heic(tmp_path / "x.bin", HALVES).read_bytes()
    assert decode.heif.container_kind(heic) == "heif"
    assert decode_image(heic).shape == (60, 100, 3)
