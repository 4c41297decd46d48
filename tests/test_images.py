import os

import cv2
import numpy as np
import pytest

import cbir.compute.work as file_work
import cbir.images.decode as images
from cbir.errors import ImageError, UsageError
from cbir.images.decode import Photo, decode_image, image_size, read_image
from cbir.images.metadata import PhotoInfo
from cbir.images.scan import find_images
from cbir.compute.work import load_file
from conftest import add_broken_files, coloured_image, jpeg_with_orientation, write_image


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    picture = coloured_image((0, 0, 255), 0)
    for relative in ["b/2.JPG", "a/1.jpeg", "a/deep/3.PnG", "c.webp", "d.TIFF", "e.bmp"]:
        write_image(tmp_path / relative.lower(), picture)
        if relative != relative.lower():
            os.rename(tmp_path / relative.lower(), tmp_path / relative)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "archive.zip").write_bytes(b"PK")
    found = find_images(tmp_path)
    relative = [str(p.relative_to(tmp_path)) for p in found]
    assert relative == ["c.webp", "d.TIFF", "e.bmp", "a/1.jpeg", "a/deep/3.PnG", "b/2.JPG"]
    assert all(p.is_absolute() for p in found)


def test_find_images_survives_symlink_loops(tmp_path):
    write_image(tmp_path / "a" / "x.png", coloured_image((0, 255, 0), 1))
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = find_images(tmp_path)
    assert [p.name for p in found] == ["x.png"]


def test_find_images_follows_a_symlinked_folder_once(tmp_path):
    write_image(tmp_path / "real" / "x.png", coloured_image((0, 255, 0), 1))
    os.symlink(tmp_path / "real", tmp_path / "zlink")
    assert [p.name for p in find_images(tmp_path)] == ["x.png"]


def test_find_images_rejects_missing_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        find_images(tmp_path / "nope")


def test_decode_converts_to_rgb(tmp_path):
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[:] = (255, 0, 0)  # blue in OpenCV's BGR order
    path = write_image(tmp_path / "blue.png", bgr)
    rgb = read_image(path)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 255)


@pytest.mark.parametrize(
    "array",
    [
        np.full((16, 24), 128, np.uint8),  # greyscale
        (np.arange(16 * 24).reshape(16, 24) * 150).astype(np.uint16),  # 16-bit
        np.dstack([np.full((16, 24, 3), 90, np.uint8), np.full((16, 24), 200, np.uint8)]),  # RGBA
    ],
    ids=["grey", "16bit", "rgba"],
)
def test_decode_handles_grey_16bit_and_alpha(tmp_path, array):
    path = write_image(tmp_path / "odd.png", array)
    rgb = read_image(path)
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    bgr = np.zeros((40, 80, 3), np.uint8)
    bgr[:, :40] = (0, 0, 255)  # left half red
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_with_orientation(bgr, 6))  # 6 = rotate 90 degrees clockwise to display
    rgb = read_image(path)
    assert rgb.shape[:2] == (80, 40)
    assert rgb[5, 20, 0] > 200 and rgb[75, 20, 0] < 60  # the red half is now on top


def test_large_jpeg_is_decoded_at_reduced_scale_but_not_below_min_side():
    ok, encoded = cv2.imencode(".jpg", coloured_image((0, 0, 255), 3, size=(400, 600)))
    data = encoded.tobytes()
    assert image_size(data) == (600, 400)
    assert decode_image(data).shape[:2] == (400, 600)
    assert decode_image(data, min_side=100).shape[:2] == (100, 150)
    assert decode_image(data, min_side=150).shape[:2] == (200, 300)
    assert decode_image(data, min_side=300).shape[:2] == (400, 600)


def test_png_size_is_read_from_header():
    ok, encoded = cv2.imencode(".png", np.zeros((7, 9, 3), np.uint8))
    assert image_size(encoded.tobytes()) == (9, 7)


@pytest.mark.parametrize("kind,reason", [("empty", "empty file"), ("truncated", "truncated|corrupt"), ("text", "not a readable image")])
def test_broken_files_raise_image_error_with_reason(tmp_path, kind, reason):
    broken = add_broken_files(tmp_path)
    with pytest.raises(ImageError, match=reason):
        read_image(broken[kind])
    loaded = load_file(broken[kind])
    assert loaded.image is None and loaded.error


def test_pixel_cap_refuses_decompression_bombs(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", np.zeros((100, 100, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(ImageError, match="too large"):
        read_image(path)


def test_permission_denied_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    path = write_image(tmp_path / "secret.png", np.zeros((8, 8, 3), np.uint8))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(file_work, "open", refuse, raising=False)
    loaded = load_file(path)
    assert loaded.image is None and "permission denied" in loaded.error


def test_load_file_skips_decoding_when_content_hash_matches(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.png", coloured_image((9, 9, 9), 0))
    first = load_file(path)
    calls = []
    monkeypatch.setattr(file_work, "decode_file", lambda *a, **k: calls.append(a) or Photo(first.image, PhotoInfo()))
    again = load_file(path, known_sha256=first.sha256)
    assert again.unchanged and again.image is None and calls == []
    changed = load_file(path, known_sha256="0" * 64)
    assert not changed.unchanged and len(calls) == 1


def test_resize_reduce_keeps_the_aspect_ratio_and_a_minimum_shorter_side():
    from cbir.images.decode import resize_image

    image = np.zeros((300, 500, 3), np.uint8)
    assert resize_image(image, 100, "reduce").shape == (100, 166, 3)  # factor 3
    assert resize_image(image, 160, "reduce").shape == (300, 500, 3)  # a factor of 2 would go below 160
    grey = np.zeros((64, 48, 1), np.uint8)
    assert resize_image(grey, 16, "squash").shape == (16, 16, 1)  # OpenCV drops the channel axis; not here
    assert resize_image(grey, 16, "pad", fill=(9,))[0, 0, 0] == 9
