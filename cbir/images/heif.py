"""HEIC/HEIF (pillow-heif, the ``formats`` extra) and AVIF (Pillow's own plugin): phones' formats.

Both are ISO-BMFF containers, told apart by the brands of their ``ftyp``
box, so bytes from anywhere (a file, an upload, standard input) are
recognised without a suffix. The same safety as the OpenCV decoder: the
size is read from the container and checked against the pixel cap before any
pixel is decoded, orientation is applied (libheif applies HEIF's
``irot``/``imir``; Pillow gives AVIF's as EXIF orientation, applied here),
and any failure is one :class:`~cbir.errors.ImageError` line. A HEIC's
embedded thumbnail is decoded instead of the image when its shorter side is
at least ``min_side`` (phones store one of 320-512 pixels; ten times faster).
"""

from __future__ import annotations

import importlib
import importlib.util
import io

import numpy as np

from cbir.errors import ImageError
from cbir.extras import missing_extra
from cbir.images.metadata import PhotoInfo, read_exif_block

#: Suffixes of HEIF files (HEVC-coded: iPhones' default since 2017).
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
#: AV1-coded HEIF.
AVIF_EXTENSIONS = frozenset({".avif"})

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
#: What cbir says when a HEIC arrives without pillow-heif.
HEIF_NEEDS = missing_extra("pillow-heif", "formats", "reading HEIC/HEIF images")


def container_kind(data: bytes) -> str | None:
    """``"avif"``, ``"heif"`` or ``None``, from the ``ftyp`` box's major and compatible brands."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(data[0:4], "big")
    end = min(len(data), box_size if 16 <= box_size <= 4096 else 16)
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None


def heif_available() -> bool:
    """Whether pillow-heif is installed (found without importing it)."""
    return _installed("pillow_heif")


def pillow_reads_avif() -> bool:
    """Whether the installed Pillow has its AVIF plugin (wheels from Pillow 11.3 on)."""
    if not _installed("PIL"):
        return False
    from PIL import features

    return bool(features.check("avif"))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def decode_heif(data: bytes, min_side: int | None, limit: int) -> tuple[np.ndarray, PhotoInfo]:
    """A HEIC/HEIF as an RGB uint8 array (oriented), and its metadata."""
    try:
        pillow_heif = importlib.import_module("pillow_heif")
    except ImportError:
        raise ImageError(str(HEIF_NEEDS)) from None
    try:
        heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)
        width, height = heif.size  # after irot/imir: as displayed
        if width * height > limit:
            raise ImageError(f"image too large ({width}x{height} pixels, limit {limit:,})")
        primary = next((image for image in heif if image.info.get("primary")), heif[0])
        source = _thumbnail(primary, min_side) or primary
        pixels = np.asarray(source)
    except ImageError:
        raise
    except (ValueError, EOFError, SyntaxError, RuntimeError, OSError, IndexError) as exc:
        raise ImageError(f"cannot decode HEIF: {_first_line(exc)}") from None
    info = read_exif_block(heif.info.get("exif"), width, height, oriented=True)
    return _as_rgb(pixels), info


def _thumbnail(primary, min_side: int | None):
    """The smallest embedded thumbnail whose shorter side is at least ``min_side``, if any."""
    if not min_side:
        return None
    best = None
    for index in range(len(primary.info.get("thumbnails", []))):
        thumb = primary.get_thumbnail(index)
        if min(thumb.size) >= min_side and (best is None or min(thumb.size) < min(best.size)):
            best = thumb
    return best


def decode_avif(data: bytes, limit: int) -> tuple[np.ndarray, PhotoInfo]:
    """An AVIF through Pillow: RGB uint8 (EXIF/irot orientation applied) and its metadata."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data), formats=["AVIF"]) as image:
            width, height = image.size
            if width * height > limit:
                raise ImageError(f"image too large ({width}x{height} pixels, limit {limit:,})")
            exif = image.getexif()
            oriented = ImageOps.exif_transpose(image)
            pixels = np.asarray(oriented.convert("RGB"))
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a broken file
        raise ImageError(f"cannot decode AVIF: {_first_line(exc)}") from None
    info = read_exif_block(exif.tobytes() if len(exif) else None, width, height)
    return np.ascontiguousarray(pixels), info.with_size(pixels.shape[1], pixels.shape[0])


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    if pixels.dtype != np.uint8:  # 10/12-bit kept as 16-bit: scale down
        pixels = (pixels >> 8).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
