"""Local features for spatial verification: keypoints and descriptors of one image, packed compactly.

Computed at index time from the image decoded at the size they need
(:attr:`LocalExtractor.decode_min_side`; the extractor's own, often much
smaller, decode and so every vector stay as they are) and stored per image in the
catalogue; at query time :mod:`cbir.ann.verify` matches them and counts
RANSAC inliers. Two kinds:

* ``rootsift`` (default): OpenCV SIFT, L1-normalised and square-rooted
  (Arandjelovic & Zisserman 2012), quantised to uint8: 128 bytes a keypoint;
* ``orb``: OpenCV ORB, 32-byte binary descriptors, about 4x faster to extract
  and 4x smaller, less robust to scale change.

A packed record (:func:`pack`) is a small header, keypoint coordinates as
float16 normalised by the image's longer side (so they map onto any resized
copy of it, as the montage draws them), then the descriptors. No pickle.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cbir.errors import UsageError

import cv2

KINDS = ("rootsift", "orb")
DEFAULT_KIND = "rootsift"
#: At most this many keypoints an image (the strongest): 256 RootSIFT ones pack into 33 KB.
DEFAULT_MAX_KEYPOINTS = 256
#: Features are detected on the image scaled down to at most this longer side.
DEFAULT_MAX_SIDE = 512
#: RootSIFT detects on the image scaled down to at most this longer side. OpenCV doubles the image
#: for SIFT's first octave (4x the pixels, two thirds of its time; not settable from Python), so 256
#: is SIFT's first octave at the resolution of a 512 px image. An index without the key was made
#: detecting at ``max_side`` and is read so.
DEFAULT_DETECT_SIDE = DEFAULT_MAX_SIDE  # 256 was measured: -0.07 mAP on MobileNet warped queries (docs/verify.md)
#: Descriptor bytes a keypoint, by kind.
DESCRIPTOR_BYTES = {"rootsift": 128, "orb": 32}
#: RootSIFT components lie in [0, 1] and rarely exceed 0.5: this scale keeps them within uint8.
_ROOTSIFT_SCALE = 512.0

_MAGIC = b"LF1"
_HEADER = struct.Struct("<3sBH")  # magic, kind index, keypoint count


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image: ``xy`` (n, 2) float32 normalised by the longer side, ``descriptors`` (n, bytes) uint8."""

    kind: str
    xy: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)


@dataclass(frozen=True)
class LocalFeatureConfig:
    """How an index's local features are computed; stored in its manifest as :meth:`to_dict`."""

    kind: str = DEFAULT_KIND
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS
    max_side: int = DEFAULT_MAX_SIDE
    detect_side: int = DEFAULT_DETECT_SIDE  # RootSIFT only (ORB builds its own pyramid, no doubling)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"local features must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name, low, high in (("max_keypoints", 8, 2000), ("max_side", 64, 4096), ("detect_side", 64, 4096)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"local features {name} must be an integer from {low} to {high}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_keypoints": self.max_keypoints, "max_side": self.max_side, "detect_side": self.detect_side}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "LocalFeatureConfig":
        """The config ``config`` records; one saved before ``detect_side`` existed is read as it was made."""
        known = {k: config[k] for k in ("kind", "max_keypoints", "max_side", "detect_side") if k in config}
        return cls(**{"detect_side": known.get("max_side", DEFAULT_MAX_SIDE), **known})

    @property
    def max_bytes(self) -> int:
        """The largest packed record this config makes."""
        return _HEADER.size + self.max_keypoints * (4 + DESCRIPTOR_BYTES[self.kind])

    def extractor(self) -> "LocalExtractor":
        return LocalExtractor(self)


class LocalExtractor:
    """``extract(rgb) -> packed bytes``; builds its OpenCV detector once (one per thread or process)."""

    def __init__(self, config: LocalFeatureConfig):
        self.config = config
        self._local = threading.local()  # one OpenCV detector per thread: loader threads share this object

    @property
    def _detector(self):
        detector = getattr(self._local, "detector", None)
        if detector is None:
            n = self.config.max_keypoints
            if self.config.kind == "rootsift":
                detector = cv2.SIFT_create(nfeatures=n)
            else:
                detector = cv2.ORB_create(nfeatures=n, scaleFactor=1.2, nlevels=8, fastThreshold=10)
            self._local.detector = detector
        return detector

    @property
    def decode_min_side(self) -> int:
        """The shorter side an image should be decoded at for these features (a 4:3 photo's longer side reaches ``max_side``)."""
        return self.config.max_side * 3 // 4

    def __call__(self, image: np.ndarray) -> bytes:
        return pack(self.features(image))

    def features(self, image: np.ndarray) -> LocalFeatures:
        """The strongest keypoints of an RGB (or grey) uint8 image, as :class:`LocalFeatures`."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        height, width = grey.shape[:2]
        longer = max(height, width)
        side = min(self.config.max_side, self.config.detect_side) if self.config.kind == "rootsift" else self.config.max_side
        scale = min(1.0, side / longer)
        if scale < 1.0:
            grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._detector.detectAndCompute(grey, None)
        kind = self.config.kind
        if descriptors is None or not keypoints:
            return LocalFeatures(kind, np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES[kind]), np.uint8))
        order = np.argsort([-kp.response for kp in keypoints], kind="stable")[: self.config.max_keypoints]
        xy = np.array([keypoints[i].pt for i in order], dtype=np.float32) / (longer * scale)
        descriptors = descriptors[order]
        if kind == "rootsift":
            descriptors = rootsift_uint8(descriptors)
        return LocalFeatures(kind, xy, np.ascontiguousarray(descriptors, dtype=np.uint8))


def rootsift_uint8(sift: np.ndarray) -> np.ndarray:
    """SIFT descriptors -> RootSIFT (L1-normalise, square root: unit L2 norm), quantised to uint8."""
    sift = np.asarray(sift, dtype=np.float32)
    root = np.sqrt(sift / np.maximum(sift.sum(axis=1, keepdims=True), 1e-12))
    return np.clip(np.rint(root * _ROOTSIFT_SCALE), 0, 255).astype(np.uint8)


def descriptors_for_matching(features: LocalFeatures) -> np.ndarray:
    """RootSIFT as unit float32 rows (dot product = cosine); ORB's bits unchanged."""
    if features.kind == "orb":
        return features.descriptors
    desc = features.descriptors.astype(np.float32)
    return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def mean_keypoints(kind: str, records: int, total_bytes: int) -> float:
    """Keypoints an image on average, from the count and total size of ``records`` packed records of ``kind``
    (each is a header and a fixed size a keypoint, so no record need be read)."""
    if records == 0:
        return 0.0
    return (total_bytes - records * _HEADER.size) / (4 + DESCRIPTOR_BYTES[kind]) / records


def pack(features: LocalFeatures) -> bytes:
    """The stored record of ``features`` (see the module docstring)."""
    header = _HEADER.pack(_MAGIC, KINDS.index(features.kind), len(features))
    return header + features.xy.astype(np.float16).tobytes() + features.descriptors.tobytes()


def unpack(data: bytes | memoryview) -> LocalFeatures:
    """The inverse of :func:`pack`; :class:`ValueError` for a record that is not one."""
    data = memoryview(data)
    if len(data) < _HEADER.size:
        raise ValueError("local features record too short")
    magic, kind_index, count = _HEADER.unpack_from(data)
    if magic != _MAGIC or kind_index >= len(KINDS):
        raise ValueError("not a local features record")
    kind = KINDS[kind_index]
    width = DESCRIPTOR_BYTES[kind]
    xy_end = _HEADER.size + count * 4
    if len(data) != xy_end + count * width:
        raise ValueError("local features record of the wrong size")
    xy = np.frombuffer(data[_HEADER.size : xy_end], dtype=np.float16).reshape(count, 2).astype(np.float32)
    descriptors = np.frombuffer(data[xy_end:], dtype=np.uint8).reshape(count, width)
    return LocalFeatures(kind, xy, descriptors)
