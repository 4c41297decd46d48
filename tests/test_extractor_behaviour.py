"""What a user expects of any extractor, checked over the whole registry (imagededup's test_hashing style).

A resized, slightly rotated or re-encoded copy of a photo must rank above
every distinct photo, and greyscale, RGBA and 16-bit files must be accepted
and give float32 unit vectors. The photos are generated (graded skies,
blurred shapes, texture: tests/conftest.py ``photo_like``) and, where the
Corel-1k collection is on this machine, eight real ones (read in place,
never copied). The deep extractors are the run's tiny models.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cbir.features.base import EXTRACTORS, make_extractor
from cbir.images.decode import decode_image, read_image
from conftest import photo_like, write_image

REPO = Path(__file__).resolve().parents[1]
COREL = Path(os.environ.get("CBIR_COREL", REPO.parent / "shared" / "datasets" / "corel1k"))
#: One Corel photo from each of eight classes (africa, beach, buildings, buses, dinosaurs, elephants, flowers, horses).
COREL_PHOTOS = [f"images/{100 * c + 7}.jpg" for c in range(8)]
DEEP = {"cnn", "autoencoder"}


@pytest.fixture(params=sorted(EXTRACTORS))
def extractor(request):
    name = request.param
    if name == "cnn":
        return request.getfixturevalue("tiny_cnn")
    if name == "autoencoder":
        return request.getfixturevalue("tiny_autoencoder")[0]
    return make_extractor(name).fit([]).build()


@pytest.fixture(scope="module", params=["generated", "corel"])
def photos(request) -> list[np.ndarray]:
    if request.param == "generated":
        return [photo_like(seed) for seed in range(8)]
    if not all((COREL / name).is_file() for name in COREL_PHOTOS):
        pytest.skip(f"Corel-1k is not at {COREL} (set CBIR_COREL)")
    return [read_image(COREL / name) for name in COREL_PHOTOS]


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def _rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return decode_image(data.tobytes())


COPIES = {
    "half size": lambda image: _resized(image, 0.5),
    "1.5x size": lambda image: _resized(image, 1.5),
    "rotated 4 degrees": lambda image: _rotated(image, 4),
    "JPEG quality 50": lambda image: _jpeg(image, 50),
}


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_a_near_copy_ranks_above_every_distinct_photo(extractor, photos, copy):
    originals = extractor.transform(photos)
    copies = extractor.transform([COPIES[copy](photo) for photo in photos])
    similarities = copies @ originals.T  # row i: copy of photo i against every original
    for i, row in enumerate(similarities):
        others = np.delete(row, i)
        assert row[i] > others.max(), f"{extractor.name}: the {copy} copy of photo {i} ranks below photo {others.argmax()}"


def _unit_float32(vectors: np.ndarray, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (1, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["greyscale", "rgba", "16-bit", "16-bit greyscale"])
def test_other_pixel_formats_are_accepted_and_embed_like_the_photo(extractor, kind, tmp_path):
    """Decoded as every index and query decodes files; the 8-bit RGB photo they came from is still the nearest."""
    photos = [photo_like(seed) for seed in range(4)]
    bgr = photos[0][:, :, ::-1]
    if kind == "greyscale":
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        reference = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    elif kind == "rgba":
        pixels = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
        reference = photos[0]
    elif kind == "16-bit":
        pixels = bgr.astype(np.uint16) * 257
        reference = photos[0]
    else:
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
        reference = cv2.cvtColor((pixels // 257).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    path = write_image(tmp_path / f"{kind}.png", pixels)
    decoded = read_image(path, extractor.decode_min_side)
    assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
    vector = extractor.transform([decoded])
    _unit_float32(vector, extractor.dim)
    candidates = extractor.transform([reference, *photos[1:]])
    assert int(np.argmax(candidates @ vector[0])) == 0
