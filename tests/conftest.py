"""Images the tests make themselves: small, coloured, one folder per class."""

from __future__ import annotations

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
