"""Decoding image bytes safely into RGB arrays, and resizing them.

The decoder is OpenCV's, with EXIF orientation applied, a pixel cap against
decompression bombs and reduced-scale JPEG decoding when the extractor needs
fewer pixels. Which suffixes this OpenCV build reads is decided here too.
HEIC and AVIF bytes are recognised by their container and go to
:mod:`cbir.images.heif`; :func:`decode_file` also reads RAW files
(:mod:`cbir.images.raw`) and each file's metadata (:mod:`cbir.images.metadata`).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cbir.errors import ImageError, UsageError
from cbir.images import heif, raw
from cbir.images.metadata import PhotoInfo, read_photo_info

import cv2

#: Above this many pixels an image is refused unread (Pillow uses the same order of magnitude).
#: JPEG, PNG, BMP, GIF and WebP are refused from their header (:func:`image_size`); other
#: formats meet OpenCV's own cap first (2**30 pixels unless ``OPENCV_IO_MAX_IMAGE_PIXELS``,
#: read when cv2 is imported, says less: the ``cbir`` command sets it to this), then this one.
MAX_IMAGE_PIXELS = 180_000_000


#: Lower-case suffixes treated as images when walking a folder (see also :func:`readable_extensions`).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})



#: Formats read where this OpenCV build has the codec: GIF (first frame), Netpbm, JPEG 2000, AVIF.
OPTIONAL_EXTENSIONS = {
    ".gif": ".gif", ".ppm": ".ppm", ".pgm": ".pgm", ".pbm": ".pbm", ".pnm": ".pnm",
    ".jp2": ".jp2", ".j2k": ".jp2", ".avif": ".avif",
}




logger = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def readable_extensions() -> frozenset[str]:
    """:data:`IMAGE_EXTENSIONS`, those of :data:`OPTIONAL_EXTENSIONS` this OpenCV decodes, AVIF where
    Pillow reads it, and HEIF and RAW suffixes where the ``formats`` extra is installed."""
    readable = _opencv_extensions()
    if heif.pillow_reads_avif():
        readable |= heif.AVIF_EXTENSIONS
    if heif.heif_available():
        readable |= heif.HEIF_EXTENSIONS
    if raw.raw_available():
        readable |= raw.RAW_EXTENSIONS
    return readable


#: Suffixes the ``formats`` extra reads (HEIC/HEIF, camera RAW): without it, counted as needing it.
FORMATS_EXTRA_EXTENSIONS = heif.HEIF_EXTENSIONS | raw.RAW_EXTENSIONS


@functools.cache
def _opencv_extensions() -> frozenset[str]:
    sample = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    readable = set(IMAGE_EXTENSIONS)
    for suffix, codec in OPTIONAL_EXTENSIONS.items():
        try:
            ok, encoded = cv2.imencode(codec, sample[:, :, 0] if codec in (".pbm", ".pgm") else sample)
            if ok and cv2.imdecode(encoded, cv2.IMREAD_COLOR) is not None:
                readable.add(suffix)
        except cv2.error:
            pass  # no codec in this build
    return frozenset(readable)



def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from a JPEG, PNG, BMP, GIF or WebP header, or ``None`` if unknown."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(_JPEG_MAGIC):
        return _jpeg_size(data)
    if data.startswith(b"BM") and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            return struct.unpack("<HH", data[18:22])
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)  # a negative height is a top-down bitmap
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP" and len(data) >= 30:
        return _webp_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: key frame header
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # Start-of-frame markers carry the size; C4, C8 and CC are other tables.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _looks_truncated(data: bytes) -> bool:
    # A complete JPEG has an end-of-image marker after its last start-of-scan;
    # entropy-coded data cannot contain FFD9, so its absence means a cut file.
    # (Newer OpenCV refuses such files itself; older ones decode them grey.)
    return data.startswith(_JPEG_MAGIC) and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def decode_image(data: bytes, min_side: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes into an RGB uint8 ``(height, width, 3)`` array.

    EXIF orientation is applied; greyscale, 16-bit and RGBA inputs come out as
    8-bit RGB (alpha dropped). When ``min_side`` is given, a JPEG is decoded at
    the smallest of the scales 1/8, 1/4, 1/2 whose shorter side is still at
    least ``min_side`` pixels, which is several times faster than full size.
    ``max_pixels`` lowers the pixel cap below :data:`MAX_IMAGE_PIXELS` (a
    server decoding uploads); JPEG and PNG are refused from their header.

    Raises
    ------
    ImageError
        For empty, truncated, oversized or undecodable data.
    """
    if len(data) == 0:
        raise ImageError("empty file")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else min(max_pixels, MAX_IMAGE_PIXELS)
    container = _container_photo(data, min_side, limit)
    if container is not None:
        return container.image
    return _decode_opencv(data, min_side, limit)


def _decode_opencv(data: bytes, min_side: int | None, limit: int) -> np.ndarray:
    size = image_size(data)
    flag = cv2.IMREAD_COLOR
    if size is not None:
        width, height = size
        if width * height > limit:
            raise ImageError(f"image too large ({width}x{height} pixels, limit {limit:,})")
        if min_side and data.startswith(_JPEG_MAGIC):
            for factor, reduced_flag in _REDUCED_FLAGS:
                if min(width, height) // factor >= min_side:
                    flag = reduced_flag
                    break
    if _looks_truncated(data):
        raise ImageError("truncated JPEG")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" in str(exc):
            raise ImageError(f"image too large (limit {MAX_IMAGE_PIXELS:,} pixels)") from None
        raise ImageError(f"cannot decode: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        if data.startswith((_JPEG_MAGIC, _PNG_MAGIC)):
            raise ImageError("corrupt or truncated image data")
        raise ImageError("not a readable image")
    if size is None and image.shape[0] * image.shape[1] > limit:  # formats whose header is not parsed
        raise ImageError(f"image too large ({image.shape[1]}x{image.shape[0]} pixels, limit {limit:,})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Photo(NamedTuple):
    """A decoded file: its RGB pixels, its metadata, and for a RAW where the pixels came from."""

    image: np.ndarray
    info: PhotoInfo
    #: ``"preview"`` or ``"demosaiced"`` for a RAW file (:data:`cbir.images.raw.SOURCES`), else "".
    source: str = ""


def decode_file(data: bytes, suffix: str, min_side: int | None = None, max_pixels: int | None = None) -> Photo:
    """:func:`decode_image` for a file's bytes, with its metadata; RAW files are told by ``suffix``.

    The metadata comes from the same bytes (no second read). Raises
    :class:`~cbir.errors.ImageError` as :func:`decode_image` does.
    """
    if len(data) == 0:
        raise ImageError("empty file")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else min(max_pixels, MAX_IMAGE_PIXELS)
    if suffix.lower() in raw.RAW_EXTENSIONS:
        return _decode_raw(data, min_side, limit)
    container = _container_photo(data, min_side, limit)
    if container is not None:
        return container
    image = _decode_opencv(data, min_side, limit)
    size = image_size(data) or (image.shape[1], image.shape[0])
    return Photo(image, read_photo_info(data, *size))


def _container_photo(data: bytes, min_side: int | None, limit: int) -> Photo | None:
    """HEIF and AVIF (where Pillow reads it; else OpenCV's AVIF codec, if any, is left to try)."""
    kind = heif.container_kind(data)
    if kind == "heif":
        return Photo(*heif.decode_heif(data, min_side, limit))
    if kind == "avif" and heif.pillow_reads_avif():
        return Photo(*heif.decode_avif(data, limit))
    return None


def _decode_raw(data: bytes, min_side: int | None, limit: int) -> Photo:
    found = raw.open_raw(data, min_side, limit, preview_size=image_size)
    if found.jpeg is not None:
        try:
            image = _decode_opencv(found.jpeg, min_side, limit)
        except ImageError as exc:
            raise ImageError(f"unreadable RAW preview: {exc}") from None
        image = np.ascontiguousarray(np.rot90(image, found.turns)) if found.turns else image
    else:
        image = found.pixels
    return Photo(image, found.info, found.source)


def read_image(path: str | os.PathLike, min_side: int | None = None) -> np.ndarray:
    """Read and decode an image file (RAW ones too); see :func:`decode_image`.

    Raises
    ------
    ImageError
        With the path and the reason, for any file that cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_file(data, Path(path).suffix, min_side).image
    except ImageError as exc:
        raise ImageError(f"cannot read {path}: {exc}") from None


#: How :func:`resize_image` fits an image to a size.
RESIZE_MODES = ("squash", "crop", "pad", "reduce")


def resize_image(image: np.ndarray, size: int, mode: str = "squash", fill: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """Resize a decoded image the way an extractor needs it; every extractor uses this one function.

    Parameters
    ----------
    image : ndarray of shape (height, width) or (height, width, channels), uint8
    size : int
        The side of the square result, or for ``"reduce"`` the shortest
        side to keep.
    mode : {"squash", "crop", "pad", "reduce"}
        ``"squash"``: both sides scaled to ``size`` (aspect ratio lost,
        nothing cut off; the CNN's default and the autoencoder's input).
        ``"crop"``: the shorter side scaled to ``size``, the centre kept.
        ``"pad"``: the longer side scaled to ``size``, the rest filled with
        ``fill``. ``"reduce"``: shrunk by the largest integer factor that
        keeps the shorter side at least ``size`` (aspect ratio kept, never
        enlarged), as JPEG's reduced-scale decoding does; what colour
        histograms use so that every image is described at a comparable scale.
    fill : tuple of int
        Padding colour for ``"pad"``, one value per channel.

    Returns
    -------
    ndarray, uint8, C-contiguous
        ``(size, size[, channels])``, or for ``"reduce"`` the reduced image.

    Notes
    -----
    Shrinking by 2x or more uses area averaging, which avoids aliasing;
    below that (the usual case, since large JPEGs are decoded at a reduced
    scale first) and when enlarging, bilinear interpolation, which is as good
    for retrieval at a quarter of the cost (see docs/cnn.md).
    """
    height, width = image.shape[:2]
    if mode == "squash":
        return _scale(image, size, size)
    if mode == "crop":
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        scaled = _scale(image, new_w, new_h)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return np.ascontiguousarray(scaled[top : top + size, left : left + size])
    if mode == "pad":
        scale = size / max(height, width)
        new_h, new_w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
        out = np.empty((size, size, *image.shape[2:]), dtype=image.dtype)
        out[:] = fill if image.ndim == 3 else fill[0]
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out[top : top + new_h, left : left + new_w] = _scale(image, new_w, new_h)
        return out
    if mode == "reduce":
        factor = min(height, width) // max(int(size), 1)
        if factor < 2:
            return np.ascontiguousarray(image)
        return _scale(image, width // factor, height // factor)
    raise UsageError(f"unknown resize mode {mode!r}; choose one of: {', '.join(RESIZE_MODES)}")


def _scale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == (width, height):
        return np.ascontiguousarray(image)
    shrink = min(image.shape[1] / width, image.shape[0] / height)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)
    # OpenCV drops a trailing axis of length 1 (greyscale (h, w, 1) images).
    return resized.reshape(height, width, *image.shape[2:])
