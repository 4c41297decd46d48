"""Small photos of the formats phones and cameras write, made by the same libraries that read them.

HEIC through pillow-heif, AVIF through Pillow, DNG through tifffile (a Bayer
mosaic with the DNG tags LibRaw needs, optionally an embedded JPEG or bitmap
preview), JPEG with an EXIF block (date, camera, GPS) through Pillow.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

#: Left half red, right half blue (RGB): where each half ends up shows the orientation applied.
HALVES = np.zeros((60, 100, 3), np.uint8)
HALVES[:, :50] = (230, 20, 20)
HALVES[:, 50:] = (20, 20, 230)


def exif_bytes(orientation: int = 1, make: str = "", model: str = "", taken: str = "", gps: tuple[float, float] | None = None) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps is not None:
        lat, lon = gps
        exif.get_ifd(0x8825).update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W", 4: _dms(lon)})
    return exif.tobytes()


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees, minutes = int(value), int(value * 60) % 60
    return (float(degrees), float(minutes), round((value * 3600) % 60, 4))


def write_heic(path: Path, rgb: np.ndarray, exif: bytes = b"", thumbnails=()) -> Path:
    pillow_heif = pytest.importorskip("pillow_heif", reason="the formats extra is not installed")
    from PIL import Image

    heif = pillow_heif.from_pillow(Image.fromarray(np.ascontiguousarray(rgb)))
    heif.save(path, quality=90, exif=exif or None, thumbnails=list(thumbnails))
    return path


def write_avif(path: Path, rgb: np.ndarray, exif: bytes = b"") -> Path:
    from PIL import Image, features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF plugin")
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="AVIF", quality=90, exif=exif or b"")
    return path


def write_jpeg(path: Path, rgb: np.ndarray, exif: bytes = b"") -> Path:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="JPEG", quality=92, exif=exif)
    return path


def bayer(rgb: np.ndarray, white: int = 4000) -> np.ndarray:
    """An RGGB mosaic of an RGB picture (what a sensor would have recorded)."""
    scaled = rgb.astype(np.float64) / 255 * white
    cfa = np.empty(rgb.shape[:2], np.uint16)
    cfa[0::2, 0::2] = scaled[0::2, 0::2, 0]
    cfa[0::2, 1::2] = scaled[0::2, 1::2, 1]
    cfa[1::2, 0::2] = scaled[1::2, 0::2, 1]
    cfa[1::2, 1::2] = scaled[1::2, 1::2, 2]
    return cfa


def write_dng(path: Path, rgb: np.ndarray, orientation: int = 1, preview: np.ndarray | None = None, make: str = "CbirCam", model: str = "One") -> Path:
    """A DNG of ``rgb`` as a Bayer mosaic; ``preview`` (RGB) embedded as a JPEG when given."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile (the test extra) writes the test DNGs")
    identity = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    dng_tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, f"{make} {model}", True),  # UniqueCameraModel
        (50721, "2i", 9, tuple(v for pair in identity for v in pair), True),  # ColorMatrix1
        (50778, "H", 1, (21,), True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
        (271, "s", 0, make, True),
        (272, "s", 0, model, True),
        (274, "H", 1, (orientation,), True),
    ]
    raw_tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "I", 1, (4095,), True)]
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        if preview is None:
            tif.write(bayer(rgb), photometric=32803, planarconfig=1, extratags=dng_tags + raw_tags, subfiletype=0)
            path.write_bytes(buffer.getvalue())
            return path
        jpeg = cv2.imencode(".jpg", np.ascontiguousarray(preview[:, :, ::-1]))[1].tobytes()
        # The preview IFD is written uncompressed, then pointed at the JPEG (kept in a private tag):
        # tifffile cannot JPEG-compress without imagecodecs, and the bytes are already JPEG.
        tif.write(preview, photometric="rgb", subfiletype=1, subifds=1, rowsperstrip=preview.shape[0],
                  extratags=dng_tags + [(50740, "B", len(jpeg), jpeg, True)])
        tif.write(bayer(rgb), photometric=32803, planarconfig=1, extratags=raw_tags, subfiletype=0)
    data = bytearray(buffer.getvalue())
    first = tifffile.TiffFile(io.BytesIO(bytes(data))).pages[0]
    for code, value in ((259, 7), (262, 6), (273, bytes(data).find(jpeg)), (279, len(jpeg))):
        tag = first.tags[code]
        struct.pack_into("<I" if tag.dtype in (4, 13) else "<H", data, tag.valueoffset, value)
    path.write_bytes(bytes(data))
    return path
