"""What a query may be (a path, bytes, an array), and turning a batch of them into prepared model inputs.

Every input is decoded by the indexing decoder and prepared exactly as the collection was; a bad one
becomes its own :class:`~cbir.errors.ImageError`, not the batch's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

from cbir.errors import ImageError
from cbir.fileio import file_sha256, sha256_bytes
from cbir.images.decode import decode_image, read_image
from cbir.images.scan import normalize_path
from cbir.images.video import is_video_path, looks_like_video


#: What a query can be: an image file's path, its encoded bytes, or a decoded uint8 array.
QueryImage = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]


def content_digest(image: Any) -> str | None:
    """The content hash the catalogue keeps, of a query file or encoded bytes; ``None`` for an array."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return sha256_bytes(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        try:
            return file_sha256(image)
        except OSError:
            return None  # query_many reports the unreadable file
    return None



def default_name(image: Any) -> str:
    if isinstance(image, Prepared):
        return "<prepared>"
    if isinstance(image, (str, os.PathLike)):
        return str(normalize_path(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(image, np.ndarray):
        return "<array>"
    raise wrong_type(image)



def wrong_type(image: Any) -> TypeError:
    return TypeError(
        "a query image must be a file path (str or os.PathLike), the bytes of an encoded image, "
        f"or a decoded uint8 NumPy array; got {type(image).__name__}"
    )



@dataclass(frozen=True)
class Prepared:
    """An image already decoded and prepared (:meth:`Searcher.prepare <cbir.retrieval.search.Searcher.prepare>`), taken as it is.

    A server prepares several uploads of one query in parallel threads, then searches them as examples.
    """

    item: Any


@dataclass(frozen=True)
class WithFeatures:
    """A prepared query item and the query's local features, for a verifying :class:`~cbir.retrieval.search.Searcher`."""

    item: Any
    features: Any


def prepare_batch(images: Sequence[QueryImage], channels: str, embedder, local=None) -> list[tuple[Any, ImageError | None]]:
    """``(prepared item, None)`` or ``(None, error)`` per image, in order.

    Files go through the one loader (read, decode and ``prepare`` in threads);
    bytes and arrays are decoded or checked here. With ``local`` (a
    :class:`cbir.features.local.LocalExtractor`) items are :class:`WithFeatures`,
    the features computed from the pixels the extractor sees, as at indexing.
    """
    from cbir.compute.work import PrepareSpec
    from cbir.cpus import usable_cores
    from cbir.compute.loader import load_prepared

    # A video is refused as a query (which of its frames would it be?): a still taken from it is the query.
    paths = [normalize_path(image) for image in images if isinstance(image, (str, os.PathLike)) and not is_video_path(image)]
    # Only files need the loader (and the core count, read from the cgroup): bytes and arrays are the server's hot path.
    workers = max(1, min(usable_cores(), len(paths))) if paths else 1
    spec = PrepareSpec(embedder.decode_min_side, local=local.config.to_dict() if local is not None else None)
    from_files = load_prepared(paths, spec, workers=workers, prepare=embedder.prepare)
    out: list[tuple[Any, ImageError | None]] = []
    for image in images:
        if isinstance(image, Prepared):
            out.append((image.item, None))
            continue
        if isinstance(image, (str, os.PathLike)) and is_video_path(image):
            out.append((None, video_query_error(str(normalize_path(image)))))
            continue
        if isinstance(image, (str, os.PathLike)):
            file, item = next(from_files)
            if item is None:
                out.append((None, ImageError(f"cannot read {file.path}: {file.error}")))
            elif local is not None:
                from cbir.features.local import unpack

                out.append((WithFeatures(item, unpack(file.local_features) if file.local_features else None), None))
            else:
                out.append((item, None))
            continue
        try:
            rgb = to_rgb(image, channels, embedder.decode_min_side)
            item = embedder.prepare(rgb)
            if local is not None:
                # Encoded bytes are decoded again at the size local features need (the extractor's may be far smaller).
                sharp = to_rgb(image, channels, local.decode_min_side) if isinstance(image, (bytes, bytearray, memoryview)) else rgb
                item = WithFeatures(item, local.features(sharp))
            out.append((item, None))
        except ImageError as exc:
            video = isinstance(image, (bytes, bytearray, memoryview)) and looks_like_video(image)
            out.append((None, video_query_error("these bytes") if video else exc))
    return out


def video_query_error(what: str) -> ImageError:
    """The one answer to a query by a video (which of its frames would it be?), from the CLI or an upload."""
    return ImageError(f"cannot query by a video ({what}): query with a still taken from it")



def to_rgb(image: QueryImage, channels: str, min_side: int | None) -> np.ndarray:
    """Any accepted query image as the RGB uint8 array extractors take."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image), min_side=min_side)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), min_side=min_side)
    if not isinstance(image, np.ndarray):
        raise wrong_type(image)
    if image.dtype != np.uint8:
        raise ImageError(f"an image array must be uint8 (0-255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ImageError(f"an image array must have shape (h, w), (h, w, 3) or (h, w, 4); got {image.shape}")
    image = image[:, :, :3]
    if channels == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)
