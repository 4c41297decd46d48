"""Shared helpers for benchmarks on Corel-1k (read-only, in ../shared; never copied)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COREL = Path(os.environ.get("CBIR_COREL", REPO.parent / "shared" / "datasets" / "corel1k"))
COREL_LABELS = COREL / "labels.csv"
MOBILENET_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"


def corel_files() -> list[Path]:
    """The 1000 Corel images, or a clear exit if the dataset is not there."""
    images = COREL / "images"
    if not images.is_dir():
        raise SystemExit(f"Corel-1k not found at {COREL} (set CBIR_COREL)")
    return sorted(images.glob("*.jpg"), key=lambda p: int(p.stem))
