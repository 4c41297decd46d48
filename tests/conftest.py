"""Images the tests make themselves, and the tiny models they share.

The tiny CNN and autoencoder are built once per test run (session fixtures):
TensorFlow's import and a training are paid once, by whichever test asks first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

# The test run is an application like the cbir command: it keeps TensorFlow's C++ logs
# (read once, when TensorFlow is imported) out of the tests' output. The library sets none.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Class name -> base BGR colour of its images.
CLASS_COLOURS = {
    "red": (40, 40, 210),
    "green": (50, 180, 60),
    "blue": (200, 90, 30),
}


def write_image(path: Path, bgr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), bgr):
        raise RuntimeError(f"cannot write {path}")
    return path


def coloured_image(colour, seed: int, size=(48, 64)) -> np.ndarray:
    """A noisy image around ``colour`` with a random darker blob, so same-class images differ."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = colour
    image += rng.normal(0, 18, size=image.shape)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[y : y + h // 3, x : x + w // 3] *= 0.6
    return np.clip(image, 0, 255).astype(np.uint8)


def make_collection(root: Path, per_class: int = 5, size=(48, 64), suffix=".jpg") -> dict[str, list[Path]]:
    """``root/<class>/<class>-<n>.jpg`` for every class in :data:`CLASS_COLOURS`."""
    files: dict[str, list[Path]] = {}
    for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
        files[name] = [
            write_image(root / name / f"{name}-{n}{suffix}", coloured_image(colour, seed=100 * c + n, size=size))
            for n in range(per_class)
        ]
    return files


def jpeg_with_orientation(bgr: np.ndarray, orientation: int) -> bytes:
    """JPEG bytes carrying an EXIF orientation tag (1-8)."""
    ok, encoded = cv2.imencode(".jpg", bgr)
    assert ok
    data = encoded.tobytes()
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def add_broken_files(folder: Path) -> dict[str, Path]:
    """One file per way an image can be unreadable."""
    folder.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".jpg", coloured_image((10, 200, 200), seed=7))
    data = encoded.tobytes()
    broken = {
        "empty": folder / "empty.jpg",
        "truncated": folder / "truncated.jpg",
        "text": folder / "notes.png",
    }
    broken["empty"].write_bytes(b"")
    broken["truncated"].write_bytes(data[: len(data) // 2])
    broken["text"].write_text("this is not an image\n")
    return broken


def photo_like(seed: int, size=(96, 128)) -> np.ndarray:
    """An RGB image with some of a photo's structure: a graded sky, blurred shapes, texture.

    Distinct seeds give distinct palettes and layouts, so near-copies of one
    should rank above the others for any extractor worth the name.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    image = np.ascontiguousarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)), dtype=np.float32)
    for _ in range(6):
        colour = [float(c) for c in rng.integers(0, 256, 3)]
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(w // 10, w // 3)), int(rng.integers(h // 10, h // 3)))
            cv2.ellipse(image, centre, axes, float(rng.integers(0, 180)), 0, 360, colour, -1)
        else:
            corner = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(image, centre, corner, colour, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


#: Small, fast settings of the deep extractors (shared by every test that builds one).
TINY_CNN = {"backbone": "mobilenet", "weights": "none", "input_size": 32, "batch_size": 4}
TINY_AUTOENCODER = {"input_size": 16, "filters": (8, 16), "latent_channels": 4, "batch_size": 8, "epochs": 2}


def rectangle_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Images of varying sizes: a coloured background with a rectangle of another colour."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = rng.integers(18, 40, size=2)
        image = np.empty((h, w, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        image[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, 3)
        images.append(image)
    return images


def _skip_without_tensorflow() -> None:
    # Not importorskip: TensorFlow must be imported the way cbir does (quietened first).
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")


@pytest.fixture(scope="session")
def tiny_cnn():
    """A random MobileNet at 32 px on TFLite, built once (:data:`TINY_CNN`); do not change it."""
    _skip_without_tensorflow()
    from cbir.features.cnn import CNNExtractor

    return CNNExtractor(**TINY_CNN).build()


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory):
    """``(extractor, training folder)``: :data:`TINY_AUTOENCODER` trained once on 24 :func:`rectangle_images`."""
    _skip_without_tensorflow()
    from cbir.indexing.train import train_autoencoder

    out = tmp_path_factory.mktemp("tiny-autoencoder")
    return train_autoencoder(rectangle_images(24), out, **TINY_AUTOENCODER), out


@pytest.fixture
def collection(tmp_path) -> Path:
    """Three colour classes of five small JPEGs each, under ``tmp_path/photos``."""
    root = tmp_path / "photos"
    make_collection(root)
    return root


@pytest.fixture
def index_dir(tmp_path) -> Path:
    return tmp_path / "indexes"


def read_only_prefix(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` is read-only for the process, even as root.

    Root writes through any file mode, so as root the folder is bind-mounted
    read-only in a private user and mount namespace (EROFS for everyone in
    it); otherwise ``chmod`` is enough (the caller restores the mode when the
    prefix is empty). Skips the test where neither is possible.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root without unshare(1): cannot make a folder read-only for this process")
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    prefix = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, str(folder)]
    probe = subprocess.run([*prefix, "sh", "-c", f'touch "{folder}/probe" 2>/dev/null; echo $?'], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() == "0":
        (folder / "probe").unlink(missing_ok=True)
        pytest.skip(f"cannot mount {folder} read-only here (unprivileged user namespaces unavailable): {probe.stderr.strip()}")
    return prefix


def slowed_indexer(name: str, sleep: float, **options) -> str:
    """A ``python -c`` script: ``index_folder(argv[1], name, argv[2], batch_size=4, **options)`` with each
    colour batch slowed by ``sleep`` s, so that a test's kill lands inside the run, not after it."""
    return (
        "import sys, time\n"
        "from cbir.features.color import ColorHistogram\n"
        "original = ColorHistogram.transform_prepared\n"
        "def slow(self, items):\n"
        f"    time.sleep({sleep!r})\n"
        "    return original(self, items)\n"
        "ColorHistogram.transform_prepared = slow\n"
        "from cbir.indexing.run import index_folder\n"
        f"index_folder(sys.argv[1], {name!r}, sys.argv[2], **{dict(batch_size=4, **options)!r})\n"
    )
