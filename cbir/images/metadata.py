"""What a photo says about itself: size, date taken, camera, GPS, read from bytes already in memory.

Read once at index time, from the same bytes the decoder gets (no second
read of the file). A JPEG's EXIF segment is found by walking its markers and
only then handed to Pillow's EXIF reader, so a file without EXIF costs a few
microseconds; other formats go through Pillow's lazy header parse. Metadata
is best-effort: a broken or missing EXIF block gives empty fields, never an
error (the image itself may still be fine).
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass, replace

_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_HEADER = b"Exif\x00\x00"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")

# EXIF tags (TIFF/EP numbering).
_ORIENTATION, _MAKE, _MODEL = 0x0112, 0x010F, 0x0110
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TIME_ORIGINAL = 0x9003
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4

_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class PhotoInfo:
    """A photo's metadata; empty strings, zeros and ``None`` where the file does not say."""

    #: As displayed (after orientation), in pixels of the full image, not of a reduced decode.
    width: int = 0
    height: int = 0
    #: EXIF DateTimeOriginal as ISO 8601 local time (``2023-07-14T10:20:30``), or "".
    taken: str = ""
    make: str = ""
    model: str = ""
    gps_lat: float | None = None
    gps_lon: float | None = None

    def with_size(self, width: int, height: int) -> "PhotoInfo":
        return replace(self, width=int(width), height=int(height))


def jpeg_exif_segment(data: bytes) -> bytes | None:
    """The TIFF-structured EXIF block of a JPEG (its APP1 ``Exif`` segment without the header), or ``None``."""
    if not data.startswith(_JPEG_MAGIC):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end: no more headers
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker == 0xE1 and data[i + 4 : i + 10] == _EXIF_HEADER:
            return data[i + 10 : i + 2 + length]
        i += 2 + length
    return None


def read_exif_block(block: bytes | None, width: int = 0, height: int = 0, oriented: bool = False) -> PhotoInfo:
    """:class:`PhotoInfo` from a TIFF-structured EXIF block (``Exif\\0\\0`` header optional).

    ``width``/``height`` are the stored image's; they are swapped when the
    EXIF orientation turns the picture a quarter and the decoder has not
    already applied it (``oriented``).
    """
    info = PhotoInfo(width, height)
    if not block:
        return info
    if block.startswith(_EXIF_HEADER):
        block = block[len(_EXIF_HEADER) :]
    try:
        from PIL import Image

        exif = Image.Exif()
        exif.load(block)
        return _from_exif(exif, width, height, oriented)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no metadata, not a broken image
        return info


def read_photo_info(data: bytes, width: int = 0, height: int = 0) -> PhotoInfo:
    """Metadata of encoded image bytes whose decoder applies EXIF orientation (JPEG, TIFF, WebP, PNG...).

    ``width``/``height``: the stored size where the caller knows it from a
    header; otherwise Pillow's header parse gives it.
    """
    if data.startswith(_JPEG_MAGIC):
        return read_exif_block(jpeg_exif_segment(data), width, height)
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:  # lazy: the header only, no pixels
            return _from_exif(image.getexif(), *image.size)
    except Exception:  # noqa: BLE001 - Pillow missing or not a format it knows: the size alone
        return PhotoInfo(width, height)


def tiff_exif_block(data: bytes) -> bytes | None:
    """A TIFF-based file (DNG, CR2, NEF, ARW...) is itself an EXIF block: its first IFD holds make and model."""
    return data if data.startswith(_TIFF_MAGICS) else None


def _from_exif(exif, width: int, height: int, oriented: bool = False) -> PhotoInfo:
    if not oriented and exif.get(_ORIENTATION) in (5, 6, 7, 8):
        width, height = height, width
    sub = exif.get_ifd(_EXIF_IFD)
    lat, lon = _gps(exif.get_ifd(_GPS_IFD))
    return PhotoInfo(
        width=int(width),
        height=int(height),
        taken=_iso_date(sub.get(_DATE_TIME_ORIGINAL)),
        make=_text(exif.get(_MAKE)),
        model=_text(exif.get(_MODEL)),
        gps_lat=lat,
        gps_lon=lon,
    )


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ").strip() if value is not None else ""


def _iso_date(value) -> str:
    match = _EXIF_DATE.match(_text(value))
    if not match:
        return ""
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    # Cameras with no clock set write zeros: not a date.
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61 and year >= 1800):
        return ""
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


def _gps(gps) -> tuple[float | None, float | None]:
    try:
        lat = _degrees(gps[_GPS_LAT], gps.get(_GPS_LAT_REF), "S")
        lon = _degrees(gps[_GPS_LON], gps.get(_GPS_LON_REF), "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None, None
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    return lat, lon


def _degrees(parts, ref, negative: str) -> float | None:
    degrees, minutes, seconds = (float(p) for p in parts)
    value = degrees + minutes / 60 + seconds / 3600
    if not math.isfinite(value):
        return None
    return -value if _text(ref).upper().startswith(negative) else value
