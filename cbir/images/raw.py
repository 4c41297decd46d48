"""Camera RAW files through rawpy (LibRaw), the ``formats`` extra: the cheapest image good enough.

Three sources, cheapest first. A JPEG sidecar with the same stem is chosen
by the folder walk (:mod:`cbir.images.scan`): the RAW is then not read at
all. Otherwise the embedded preview (most cameras store a full- or
near-full-size JPEG) when its shorter side is at least what the extractor
needs, or at least what a half-size demosaic would give; else LibRaw
demosaics at half size (a quarter of the pixels, no interpolation). The
pixel cap is checked from LibRaw's header parse before anything is
unpacked. This module hands back a preview's JPEG bytes undecoded: the
OpenCV decoder (:mod:`cbir.images.decode`) decodes them at reduced scale.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
from dataclasses import dataclass

import numpy as np

from cbir.errors import ImageError
from cbir.extras import missing_extra
from cbir.images.metadata import PhotoInfo, jpeg_exif_segment, read_exif_block, tiff_exif_block

#: Suffixes of camera RAW formats LibRaw reads.
RAW_EXTENSIONS = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".srw",
     ".pef", ".raw", ".rwl", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".mos", ".mef"}
)
#: What cbir says when a RAW file arrives without rawpy.
RAW_NEEDS = missing_extra("rawpy", "formats", "reading camera RAW files")

#: How a RAW's image was obtained (the summary counts them; "sidecar" is decided by the scan).
SOURCES = ("sidecar", "preview", "demosaiced")

# LibRaw's flip codes -> quarter turns counter-clockwise for np.rot90.
_FLIP_TURNS = {0: 0, 3: 2, 5: 1, 6: 3}


@dataclass
class RawImage:
    """A RAW's picture: either ``jpeg`` (an embedded preview to decode) or ``pixels`` (RGB uint8)."""

    source: str
    info: PhotoInfo
    pixels: np.ndarray | None = None
    jpeg: bytes | None = None
    #: Quarter turns counter-clockwise still to apply to the decoded ``jpeg`` (LibRaw rotates only what it demosaics).
    turns: int = 0


def raw_available() -> bool:
    """Whether rawpy is installed (found without importing it)."""
    try:
        return importlib.util.find_spec("rawpy") is not None
    except (ImportError, ValueError):
        return False


def open_raw(data: bytes, min_side: int | None, limit: int, preview_size=None) -> RawImage:
    """Read a RAW file's bytes: its preview (as JPEG bytes or pixels) or its half-size demosaic.

    ``preview_size`` maps JPEG bytes to their ``(width, height)`` (the
    decoder's header parser), so a preview too small is not decoded.
    """
    try:
        rawpy = importlib.import_module("rawpy")
    except ImportError:
        raise ImageError(str(RAW_NEEDS)) from None
    raw = rawpy.RawPy()
    try:
        raw.open_buffer(io.BytesIO(data))
        sizes = raw.sizes
        if max(sizes.raw_width * sizes.raw_height, sizes.width * sizes.height) > limit:
            raise ImageError(f"image too large ({sizes.width}x{sizes.height} pixels, limit {limit:,})")
        turns = _FLIP_TURNS.get(sizes.flip, 0)
        width, height = (sizes.height, sizes.width) if turns % 2 else (sizes.width, sizes.height)
        info = _raw_info(data, width, height)
        wanted = min_side or min(width, height) // 2  # no less than the demosaic would give
        preview = _preview(rawpy, raw, wanted, preview_size)
        if preview is not None:
            jpeg, pixels = preview
            if jpeg is not None:
                preview_info = read_exif_block(jpeg_exif_segment(jpeg))
                info = _merge(info, preview_info)
                return RawImage("preview", info, jpeg=jpeg, turns=0 if _exif_oriented(jpeg) else turns)
            return RawImage("preview", info, pixels=np.ascontiguousarray(np.rot90(pixels, turns)))
        pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, no_auto_bright=False)
    except ImageError:
        raise
    except rawpy.LibRawFileUnsupportedError:
        raise ImageError("not a RAW file LibRaw can read") from None
    except (rawpy.LibRawError, rawpy.NotSupportedError, ValueError, MemoryError) as exc:
        raise ImageError(f"cannot decode RAW: {_text(exc)}") from None
    finally:
        raw.close()
    return RawImage("demosaiced", info, pixels=np.ascontiguousarray(pixels[:, :, :3]))


def _preview(rawpy, raw, wanted: int, preview_size) -> tuple[bytes | None, np.ndarray | None] | None:
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawDataError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        jpeg = bytes(thumb.data)
        size = preview_size(jpeg) if preview_size is not None else None
        return (jpeg, None) if size is not None and min(size) >= wanted else None
    pixels = np.asarray(thumb.data)
    if pixels.ndim == 3 and pixels.shape[2] >= 3 and pixels.dtype == np.uint8 and min(pixels.shape[:2]) >= wanted:
        return None, pixels[:, :, :3]
    return None


def _raw_info(data: bytes, width: int, height: int) -> PhotoInfo:
    # Most RAW formats are TIFF inside: the first IFD names the camera, its EXIF IFD the date.
    return read_exif_block(tiff_exif_block(data), width, height, oriented=True)


def _merge(info: PhotoInfo, other: PhotoInfo) -> PhotoInfo:
    """``info`` with its empty fields filled from ``other`` (a preview's EXIF), size kept."""
    return PhotoInfo(
        width=info.width,
        height=info.height,
        taken=info.taken or other.taken,
        make=info.make or other.make,
        model=info.model or other.model,
        gps_lat=info.gps_lat if info.gps_lat is not None else other.gps_lat,
        gps_lon=info.gps_lon if info.gps_lon is not None else other.gps_lon,
    )


def _exif_oriented(jpeg: bytes) -> bool:
    """Whether a preview carries its own EXIF orientation (the decoder then applies it)."""
    block = jpeg_exif_segment(jpeg)
    if not block:
        return False
    try:
        from PIL import Image

        exif = Image.Exif()
        exif.load(block)
        return exif.get(0x0112, 1) != 1
    except Exception:  # noqa: BLE001
        return False


def _text(exc: BaseException) -> str:
    value = exc.args[0] if exc.args else exc
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip() or type(exc).__name__
