"""``cbir demo``: the whole loop on two pictures, nothing downloaded.

Where scikit-learn is installed, its two sample photos (a Chinese temple and a
flower); on the core install, two painted scenes (a sunset and a meadow). The
demo cuts each into varied crops (scale, position, flip, brightness), one
folder per picture, indexes them with the colour extractor, queries with a
crop that is not in the collection, writes a montage, and evaluates.
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


def sample_photos() -> dict[str, np.ndarray]:
    """Two BGR pictures by name: scikit-learn's sample photos if installed, else painted scenes."""
    try:
        import sklearn.datasets
    except ImportError:
        return painted_scenes()
    folder = Path(sklearn.datasets.__file__).parent / "images"
    photos = {p.stem: cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))}
    if not photos or any(photo is None for photo in photos.values()):
        raise UsageError(f"scikit-learn's sample photos are missing from {folder}")
    return photos


def painted_scenes(seed: int = 0) -> dict[str, np.ndarray]:
    """A sunset over hills and a flowery meadow under a blue sky, 640x427 BGR."""
    rng = np.random.default_rng(seed)
    h, w = 427, 640
    rows = np.linspace(0, 1, h)[:, None, None]
    sunset = ((1 - rows) * np.array([60, 40, 120]) + rows * np.array([40, 140, 250])) * np.ones((1, w, 1))
    sunset = sunset.astype(np.uint8)
    cv2.circle(sunset, (430, 250), 60, (90, 220, 255), -1)
    for n, shade in enumerate((50, 30)):
        xs = np.linspace(0, w, 12)
        ys = 300 + 40 * n + rng.integers(-40, 40, size=12)
        hill = np.array([[0, h], *zip(xs.astype(int), ys.astype(int)), [w, h]], dtype=np.int32)
        cv2.fillPoly(sunset, [hill], (shade, shade // 2, shade + 20))
    meadow = np.empty((h, w, 3), np.uint8)
    meadow[:170] = (230, 180, 120)
    meadow[170:] = (60, 150, 70)
    for _ in range(6):
        cv2.ellipse(meadow, (int(rng.integers(0, w)), int(rng.integers(30, 120))), (60, 22), 0, 0, 360, (250, 250, 250), -1)
    for _ in range(400):
        colour = [(40, 220, 250), (250, 250, 250), (180, 90, 230)][int(rng.integers(0, 3))]
        cv2.circle(meadow, (int(rng.integers(0, w)), int(rng.integers(180, h))), int(rng.integers(2, 6)), colour, -1)
    noise = rng.normal(0, 6, size=(h, w, 3))
    return {name: np.clip(image + noise, 0, 255).astype(np.uint8) for name, image in (("sunset", sunset), ("meadow", meadow))}


def make_collection(out: Path, crops_per_photo: int = CROPS_PER_PHOTO, seed: int = 0) -> tuple[Path, Path]:
    """Write the demo collection under ``out/collection`` and one held-out query; return both paths."""
    rng = np.random.default_rng(seed)
    collection = out / "collection"
    photos = sample_photos()
    for name, photo in photos.items():
        folder = collection / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(crops_per_photo):
            cv2.imwrite(str(folder / f"{name}-{n:02d}.jpg"), _variant(photo, rng))
    query_rng = np.random.default_rng(seed + 1)
    first = next(iter(photos))
    query = out / f"query-{first}.jpg"
    cv2.imwrite(str(query), _variant(photos[first], query_rng))
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


def run_demo(out: str | os.PathLike, index_dir=None, progress: Progress = SILENT, name: str = DEMO_INDEX) -> str:
    """Build, index, query and evaluate the demo collection as index ``name``; returns a printable report."""
    from cbir.evaluation.protocols import evaluate_index
    from cbir.indexing.run import index_folder
    from cbir.render.montage import write_montage
    from cbir.retrieval.search import Searcher
    from cbir.store.locations import index_path

    out = Path(out)
    path = index_path(name, index_dir)
    _check_replaceable(path, name, out / "collection")  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    collection, query = make_collection(out)
    if path.exists():
        import shutil

        shutil.rmtree(path)  # the demo index is rebuilt from scratch each time
    summary = index_folder(collection, name, index_dir, progress=progress)
    with Searcher.open(name, index_dir) as searcher:
        result = searcher.query(query, k=8)
    montage = write_montage(result, out / "montage.png", columns=3)
    report = evaluate_index(name, index_dir)
    classes = sorted(p.name for p in collection.iterdir() if p.is_dir())
    lines = [
        f"collection: {summary.total} images in {collection} ({len(classes)} classes: {', '.join(classes)})",
        f"index:      {summary.path} (colour histograms, {summary.seconds:.1f} s)",
        f"query:      {query}",
        *(f"  {m.rank:>2}  {m.score:.4f}  {m.path}" for m in result.results),
        f"montage:    {montage}",
        f"evaluation: P@1 {report.precision[1]:.3f}  P@10 {report.precision[10]:.3f}  mAP {report.map:.3f} (leave-one-out)",
        f"next:       cbir query YOUR.jpg --name {name} --montage out.png   |   cbir index YOUR_PHOTOS/ --name mine",
    ]
    return "\n".join(lines)


def _check_replaceable(path: Path, name: str, collection: Path) -> None:
    """An index at ``path`` may be rebuilt only if it is this demo's (it indexes ``collection``): never a user's own."""
    from cbir.errors import CbirError
    from cbir.images.scan import normalize_path
    from cbir.store.directory import IndexStore

    if not path.exists():
        return
    try:
        with IndexStore.open(path) as store:
            roots = store.indexed_roots()
    except CbirError:
        roots = None
    if roots != [str(normalize_path(collection))]:
        what = f"it indexes {', '.join(roots)}" if roots else "it is not an index the demo can read"
        raise UsageError(f"index {name!r} exists and is not this demo's ({what}): give another --name, or 'cbir delete {name}' first")
