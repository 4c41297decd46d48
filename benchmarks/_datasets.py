"""Benchmark collections built outside the repository, in a cache folder.

* **Instance-level set** (UKBench style): every Corel-1k image gives a group
  of 4 strongly augmented copies (random crop, scale, rotation, colour
  jitter, JPEG quality), one folder per group, so relevant = the other 3
  copies of the same photo. Written once under ``$CBIR_BENCH_CACHE``
  (default: ``<tmp>/cbir-bench``) and reused; deterministic (seeded).
* **Fashion-MNIST** test images as PNG files, ``N`` per class, one folder per
  class, from Debian's ``dataset-fashion-mnist`` (see
  ``autoencoder_fashion_mnist.py`` for the IDX reader).

Nothing is ever written into the repository.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from _corel import corel_files

CACHE = Path(os.environ.get("CBIR_BENCH_CACHE", Path(tempfile.gettempdir()) / "cbir-bench"))
GROUP = 4


def augment(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One strong augmentation of a BGR image, and the JPEG quality to save it with."""
    h, w = image.shape[:2]
    # crop: 45-85% of the area, random aspect change and position
    area = rng.uniform(0.45, 0.85)
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
    ch = int(min(h, round(h * np.sqrt(area / aspect))))
    cw = int(min(w, round(w * np.sqrt(area * aspect))))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = image[y : y + ch, x : x + cw]
    # rotation up to 25 degrees, keeping the whole rotated frame (borders reflected)
    angle = rng.uniform(-25, 25)
    matrix = cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, 1.0)
    out = cv2.warpAffine(out, matrix, (cw, ch), borderMode=cv2.BORDER_REFLECT_101)
    # scale: 40-100% of the crop
    scale = rng.uniform(0.4, 1.0)
    out = cv2.resize(out, (max(16, int(cw * scale)), max(16, int(ch * scale))), interpolation=cv2.INTER_AREA)
    # colour jitter in HSV: hue shift, saturation and brightness gains, then contrast
    hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-10, 10)) % 180
    hsv[..., 1] *= rng.uniform(0.6, 1.4)
    hsv[..., 2] *= rng.uniform(0.7, 1.3)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    contrast = rng.uniform(0.7, 1.3)
    out = np.clip((out - out.mean()) * contrast + out.mean(), 0, 255).astype(np.uint8)
    return out, int(rng.integers(30, 91))


def instance_set(n_images: int | None = None) -> Path:
    """Folder of ``group-XXXX/copy-k.jpg``: 4 augmented copies of each Corel image (first ``n_images``)."""
    files = corel_files()
    files = files[:n_images] if n_images else files
    root = CACHE / f"instance-corel-{len(files)}"
    done = root / ".complete"
    if done.exists():
        return root
    for path in files:
        image = cv2.imread(str(path))
        rng = np.random.default_rng(int(path.stem))
        group = root / f"group-{int(path.stem):04d}"
        group.mkdir(parents=True, exist_ok=True)
        for copy in range(GROUP):
            out, quality = augment(image, rng)
            cv2.imwrite(str(group / f"copy-{copy}.jpg"), out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    done.touch()
    return root


def fashion_mnist_set(per_class: int = 300) -> Path:
    """Folder of ``<class>/<n>.png``: the first ``per_class`` test images of each Fashion-MNIST class."""
    from _fashion_mnist import CLASSES, FILES, dataset_folder, read_idx

    root = CACHE / f"fashion-mnist-{per_class}"
    done = root / ".complete"
    if done.exists():
        return root
    source = dataset_folder(CACHE, None)
    images = read_idx(source / FILES["test"][0])
    labels = read_idx(source / FILES["test"][1])
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == label)[:per_class]):
            cv2.imwrite(str(folder / f"{n:04d}.png"), images[i])
    done.touch()
    return root
