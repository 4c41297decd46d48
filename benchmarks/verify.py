"""Spatial verification benchmark: local features (RootSIFT, ORB) and ``--verify`` on three kinds of collection.

Collections (built once under ``$CBIR_BENCH_CACHE``, see ``_datasets.py``; never in the repository):

* ``corel``: Corel-1k, 1000 photos, 10 classes (category level), leave-one-out;
* ``instance``: rerank.py's set, 4 strongly augmented copies of each of the first
  ``--instance-photos`` Corel photos (crop, rotation, scale, colour, JPEG),
  leave-one-out, N-S reported;
* ``warped``: photos unlike the rerank set's own: each of every 4th Corel
  photo (250) warped in perspective and shear, rotated up to 40 degrees,
  cropped to 35-70 % and rescaled, then queried against the Corel collection
  plus 1000 distractors (the other set's augmented copies of *other* photos
  in instance-set style: crops of every Corel photo, shifted in colour), with
  a ground-truth file: the one relevant image is the original.

For each collection and extractor the collection is indexed three times (no
local features, RootSIFT, ORB) with today's defaults (DBA 2, alpha-QE 2): the
index time ratio says what ``--local-features`` costs. mAP is measured with
``evaluate_index(verify=None)`` and ``verify=100`` on the same index.

Latency: the median of ``Searcher.query_id`` (one stored image: its vector and
its stored local features, K = 100 candidates verified) against the same call
without verification, alternating, on 100 images; and a whole ``Searcher.query``
of a file with ``--verify`` (decode, embed, the query's local features, search,
verification).

A kind may name RootSIFT's detection side after a colon (``rootsift:512``
detects at the local features' whole 512 px, as indexes made before the
setting; plain ``rootsift`` is today's default), so both compare in one run.

    python benchmarks/verify.py [--json] [--sets corel,warped,instance] [--extractors color,mobilenet] [--kinds rootsift,rootsift:512,orb]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL, COREL_LABELS, MOBILENET_WEIGHTS, corel_files  # noqa: E402
from _datasets import CACHE, instance_set  # noqa: E402

from cbir.evaluation.protocols import evaluate_index  # noqa: E402
from cbir.features.local import LocalFeatureConfig, unpack  # noqa: E402
from cbir.images.decode import read_image  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.retrieval.search import Searcher  # noqa: E402
from cbir.store.catalogue import Catalogue  # noqa: E402

EXTRACTORS = {
    "color": {"extractor": "color"},
    "mobilenet": {"extractor": "cnn", "backbone": "mobilenet", "weights": str(MOBILENET_WEIGHTS)},
}


def warp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A perspective-and-shear warp, rotation, crop and rescale of a BGR photo (unlike ``_datasets.augment``)."""
    h, w = image.shape[:2]
    jitter = 0.12
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-jitter, jitter, (4, 2)).astype(np.float32) * np.float32([w, h])
    out = cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    angle, scale = rng.uniform(-40, 40), rng.uniform(0.9, 1.3)
    out = cv2.warpAffine(out, cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    area = rng.uniform(0.35, 0.7)
    ch, cw = int(h * np.sqrt(area)), int(w * np.sqrt(area))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = out[y : y + ch, x : x + cw]
    factor = rng.uniform(0.6, 1.4)
    return cv2.resize(out, (max(16, int(cw * factor)), max(16, int(ch * factor))), interpolation=cv2.INTER_AREA)


def warped_set() -> tuple[Path, Path]:
    """``(collection folder, ground-truth CSV)``: Corel (linked) + distractors; queries are warped copies."""
    root = CACHE / "verify-warped"
    collection, queries, truth = root / "collection", root / "queries", root / "truth.csv"
    if (root / ".complete").exists():
        return collection, truth
    (collection / "corel").mkdir(parents=True, exist_ok=True)
    (collection / "distractors").mkdir(exist_ok=True)
    queries.mkdir(exist_ok=True)
    rows = ["query,relevant"]
    for path in corel_files():
        link = collection / "corel" / path.name
        if not link.exists():
            link.symlink_to(path)
        rng = np.random.default_rng(10_000 + int(path.stem))
        image = cv2.imread(str(path))
        # A distractor: a crop of this photo shifted in colour, named as another image (never relevant).
        h, w = image.shape[:2]
        crop = image[h // 8 : h - h // 8, w // 8 : w - w // 8]
        hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(20, 40)) % 180
        cv2.imwrite(str(collection / "distractors" / f"d{path.stem}.jpg"), cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR))
        if int(path.stem) % 4 == 0:
            query = queries / f"q{path.stem}.jpg"
            cv2.imwrite(str(query), warp(image, rng), [cv2.IMWRITE_JPEG_QUALITY, 80])
            rows.append(f"{query},{link}")
    truth.write_text("\n".join(rows) + "\n")
    (root / ".complete").touch()
    return collection, truth


def local_config(spec: str) -> LocalFeatureConfig:
    """``rootsift``, ``orb`` or ``rootsift:512`` (a detection side) as the config it names."""
    kind, _, side = spec.partition(":")
    return LocalFeatureConfig(kind, detect_side=int(side)) if side else LocalFeatureConfig(kind)


def extraction(kinds: list[str], n: int = 200) -> dict:
    """ms per image and bytes per image of each kind on Corel photos (one thread)."""
    images = [read_image(p) for p in corel_files()[:n]]
    out = {}
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the benchmark's own process: per-image cost on one core
    try:
        for kind in kinds:
            extractor = local_config(kind).extractor()
            started = time.perf_counter()
            records = [extractor(image) for image in images]
            seconds = time.perf_counter() - started
            out[kind] = {
                "ms_per_image": round(1000 * seconds / n, 2),
                "bytes_mean": round(float(np.mean([len(r) for r in records]))),
                "bytes_max": max(len(r) for r in records),
                "keypoints_mean": round(float(np.mean([len(unpack(r)) for r in records])), 1),
            }
    finally:
        cv2.setNumThreads(previous)
    return out


def latency(name: str, index_dir: Path, query_file: Path, n: int = 100) -> dict:
    with Searcher.open(name, index_dir) as plain, Searcher.open(name, index_dir, verify=100) as verified:
        ids = [row.id for row in plain.image_rows()][:: max(1, plain.size // n)][:n]
        plain.query_id(ids[0]), verified.query_id(ids[0])  # warm: model, caches
        times_plain, times_verified = [], []
        for image_id in ids:
            started = time.perf_counter()
            plain.query_id(image_id, 10)
            times_plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            verified.query_id(image_id, 10)
            times_verified.append(time.perf_counter() - started)
        verified.query(str(query_file), 10)
        whole = []
        for _ in range(10):
            started = time.perf_counter()
            verified.query(str(query_file), 10)
            whole.append(time.perf_counter() - started)
    return {
        "search_ms": round(1000 * statistics.median(times_plain), 1),
        "verified_search_ms": round(1000 * statistics.median(times_verified), 1),
        "verified_query_ms": round(1000 * statistics.median(whole), 1),
    }


def bench(set_name: str, extractor: str, kinds: list[str], index_dir: Path, instance_photos: int) -> dict:
    truth = None
    labels = None
    if set_name == "corel":
        folder, labels = COREL / "images", COREL_LABELS
    elif set_name == "instance":
        folder = instance_set(instance_photos)
    else:
        folder, truth = warped_set()
    result = {"set": set_name, "extractor": extractor, "runs": []}
    base_seconds = None
    for kind in [None, *kinds]:
        name = f"{set_name}-{extractor}-{(kind or 'none').replace(':', '-')}"
        local = local_config(kind).to_dict() if kind else None
        shutil.rmtree(index_dir / name, ignore_errors=True)  # index time is a fresh index's, not an update's
        summary = index_folder(folder, name, index_dir, options=EXTRACTORS[extractor], local_features=local, labels=labels)
        seconds = summary.seconds
        base_seconds = seconds if kind is None else base_seconds
        run = {"local_features": kind, "detect_side": local["detect_side"] if local else None, "index_s": round(seconds, 1), "images": summary.total}
        if kind is not None:
            run["index_time_ratio"] = round(seconds / base_seconds, 2)
            with Catalogue(index_dir / name / "catalogue.sqlite", read_only=True) as catalogue:
                count, total = catalogue.local_features_stats()
            run["kb_per_image"] = round(total / max(1, count) / 1000, 1)
        for verify in ([None] if kind is None else [100]):
            started = time.perf_counter()
            report = evaluate_index(name, index_dir, ground_truth=truth, verify=verify)
            run["map" if verify is None else "map_verified"] = round(report.map, 4)
            if report.ns_score is not None:
                run["ns" if verify is None else "ns_verified"] = round(report.ns_score, 3)
            run["eval_s" if verify is None else "eval_verified_s"] = round(time.perf_counter() - started, 1)
        if kind is not None:
            query = next(iter(sorted((CACHE / "verify-warped" / "queries").glob("*.jpg"))), None) or next(iter(sorted(Path(folder).rglob("*.jpg"))))
            run.update(latency(name, index_dir, query))
        result["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sets", default="corel,warped,instance")
    parser.add_argument("--extractors", default="color")
    parser.add_argument("--kinds", default="rootsift,orb")
    parser.add_argument("--instance-photos", type=int, default=250, help="photos of the instance set (4 copies each)")
    parser.add_argument("--index-dir", type=Path, default=CACHE / "verify-indexes")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    warped_set()
    results = {"cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()[0], "extraction": extraction(kinds), "sets": []}
    for set_name in args.sets.split(","):
        for extractor in args.extractors.split(","):
            results["sets"].append(bench(set_name, extractor, kinds, args.index_dir, args.instance_photos))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['cores']} cores, load average {results['load_average']:.1f} at the start")
    for kind, figures in results["extraction"].items():
        print(f"{kind:9s} {figures['ms_per_image']:6.1f} ms/image (1 thread)  {figures['bytes_mean'] / 1000:5.1f} KB/image (max {figures['bytes_max'] / 1000:.1f})")
    print(f"{'set':9s} {'extractor':10s} {'local':9s} {'index s':>8s} {'x':>5s} {'KB/img':>7s} {'mAP':>7s} {'mAP+v':>7s} {'N-S':>5s} {'N-S+v':>6s} {'ms':>6s} {'ms+v':>6s} {'query+v':>8s}")
    for bench_result in results["sets"]:
        base = bench_result["runs"][0]
        for run in bench_result["runs"]:
            print(
                f"{bench_result['set']:9s} {bench_result['extractor']:10s} {run['local_features'] or '-':9s} {run['index_s']:8.1f} "
                f"{run.get('index_time_ratio', 1):5.2f} {run.get('kb_per_image', 0):7.1f} {base['map']:7.4f} "
                f"{run.get('map_verified', base['map']):7.4f} {base.get('ns', 0):5.2f} {run.get('ns_verified', base.get('ns', 0)):6.2f} "
                f"{run.get('search_ms', 0):6.1f} {run.get('verified_search_ms', 0):6.1f} {run.get('verified_query_ms', 0):8.1f}"
            )


if __name__ == "__main__":
    main()
