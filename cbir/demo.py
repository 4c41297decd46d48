"""``cbir demo``: the whole loop on photos that ship with scikit-learn, nothing downloaded.

scikit-learn installs two sample photos (a Chinese temple and a flower). The
demo cuts each into varied crops (scale, position, flip, brightness), one
folder per photo, indexes them with the colour extractor, queries with a crop
that is not in the collection, writes a montage, and evaluates.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cbir.errors import UsageError
from cbir.progress import SILENT, Progress

DEMO_INDEX = "demo"
CROPS_PER_PHOTO = 24


def sample_photos() -> dict[str, Path]:
    """The photos scikit-learn ships, by name (``china``, ``flower``)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    photos = {p.stem: p for p in sorted(folder.glob("*.jpg"))}
    if not photos:
        raise UsageError(f"scikit-learn's sample photos are missing from {folder}")
    return photos


def make_collection(out: Path, crops_per_photo: int = CROPS_PER_PHOTO, seed: int = 0) -> tuple[Path, Path]:
    """Write the demo collection under ``out/collection`` and one held-out query; return both paths."""
    rng = np.random.default_rng(seed)
    collection = out / "collection"
    for name, path in sample_photos().items():
        photo = cv2.imread(str(path))
        folder = collection / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(crops_per_photo):
            cv2.imwrite(str(folder / f"{name}-{n:02d}.jpg"), _variant(photo, rng))
    query_rng = np.random.default_rng(seed + 1)
    query = out / "query-china.jpg"
    cv2.imwrite(str(query), _variant(cv2.imread(str(sample_photos()["china"])), query_rng))
    return collection, query


def _variant(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    scale = rng.uniform(0.45, 0.9)
    ch, cw = int(h * scale), int(w * scale)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = photo[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.convertScaleAbs(crop, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-10, 10))
    return cv2.resize(crop, (320, int(320 * ch / cw)), interpolation=cv2.INTER_AREA)


def run_demo(out: str | os.PathLike, index_dir=None, progress: Progress = SILENT) -> str:
    """Build, index, query and evaluate the demo collection; returns a printable report."""
    from cbir.evaluate import evaluate_index
    from cbir.indexer import index_folder
    from cbir.montage import write_montage
    from cbir.search import Searcher
    from cbir.store import index_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    collection, query = make_collection(out)
    path = index_path(DEMO_INDEX, index_dir)
    if path.exists():
        import shutil

        shutil.rmtree(path)  # the demo index is rebuilt from scratch each time
    summary = index_folder(collection, DEMO_INDEX, index_dir, progress=progress)
    with Searcher.open(DEMO_INDEX, index_dir) as searcher:
        result = searcher.query(query, k=8)
    montage = write_montage(result, out / "montage.png", columns=3)
    report = evaluate_index(DEMO_INDEX, index_dir)
    lines = [
        f"collection: {summary.total} images in {collection} (2 classes: china, flower)",
        f"index:      {summary.path} (colour histograms, {summary.seconds:.1f} s)",
        f"query:      {query}",
        *(f"  {m.rank:>2}  {m.score:.4f}  {m.path}" for m in result.results),
        f"montage:    {montage}",
        f"evaluation: P@1 {report.precision[1]:.3f}  P@10 {report.precision[10]:.3f}  mAP {report.map:.3f} (leave-one-out)",
        "next:       cbir query YOUR.jpg --name demo --montage out.png   |   cbir index YOUR_PHOTOS/ --name mine",
    ]
    return "\n".join(lines)
