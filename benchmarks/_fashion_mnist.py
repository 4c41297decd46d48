"""Fashion-MNIST's IDX files from Debian's ``dataset-fashion-mnist`` package, without TensorFlow.

Used in place if the package is installed (``/usr/share/datasets/fashion-mnist``),
else fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import numpy as np

INSTALLED = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def dataset_folder(work: Path, data: Path | None) -> Path:
    """Folder holding the four IDX files: ``data``, the installed package, or a fresh download."""
    for candidate in (data, INSTALLED):
        if candidate is not None and all((candidate / name).is_file() for pair in FILES.values() for name in pair):
            return candidate
    if data is not None:
        raise SystemExit(f"no Fashion-MNIST IDX files in {data}")
    subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("dataset-fashion-mnist_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "deb")], check=True)
    return work / "deb" / INSTALLED.relative_to("/")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array: ``(n, rows, cols)`` images or ``(n,)`` labels."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic == 0x803:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 0x801:
        return np.frombuffer(data, np.uint8, offset=8)
    raise SystemExit(f"{path} is not an IDX file of images or labels (magic {magic:#x})")
