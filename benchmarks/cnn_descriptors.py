"""CNN descriptors past one global pooling: multi-scale input, R-MAC, learned whitening.

MobileNet v1 (the shared ImageNet weights), on a category-level set (Corel-1k,
leave-one-out) and an instance-level one (``instance``: 4 augmented copies of
each Corel-1k photo, see ``_datasets.py``; N-S score too), every setting
searched with the default re-ranking (DBA-2 + αQE-2, alpha 3) and without.

Stage 1 runs the network once per image and input side in :data:`SIDES` (steps of
about sqrt(2) around 224, multiples of 32) and keeps each pooling of each side
(``avg``, ``gem``, ``max``, ``rmac``: :mod:`cbir.features.pooling`) as
``.npy`` under ``$CBIR_BENCH_CACHE/descriptors``; its time per side is the
cost of that side. Stage 2 builds every setting from those arrays in NumPy
(multi-scale = :func:`cbir.features.pooling.combine_scales` of the sides;
PCA and whitening = :class:`cbir.features.pca.PCAReduction` fitted on the
collection) and ranks as a stored index does (DBA over the collection, then
αQE with the augmented vectors: :mod:`cbir.rerank`). Stage 3 (``--index``)
builds real indexes with ``index_folder`` for the settings in
:data:`INDEXED`, evaluates them with ``evaluate_index`` (the numbers a user
gets from ``cbir evaluate``) and times them end to end.

    python benchmarks/cnn_descriptors.py [--json] [--sets corel,instance] [--index]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL_LABELS, MOBILENET_WEIGHTS, corel_files  # noqa: E402
from _datasets import CACHE, instance_set  # noqa: E402

from cbir.evaluation.protocols import leave_one_out  # noqa: E402
from cbir.features.pca import PCAReduction  # noqa: E402
from cbir.features.pooling import combine_scales, global_pool  # noqa: E402
from cbir.ann.rerank import augment_database, expand_queries  # noqa: E402

SIDES = (160, 224, 320, 448)
POOLS = ("avg", "gem", "max", "rmac")
#: name -> (pooling, sides); multi-scale settings average their sides.
DESCRIPTORS = {
    "avg 224": ("avg", (224,)),
    "avg 320": ("avg", (320,)),
    "avg 448": ("avg", (448,)),
    "avg MS 224": ("avg", (160, 224, 320)),
    "avg MS 320": ("avg", (224, 320, 448)),
    "avg MS4": ("avg", (160, 224, 320, 448)),
    "gem 224": ("gem", (224,)),
    "gem MS 224": ("gem", (160, 224, 320)),
    "rmac 224": ("rmac", (224,)),
    "rmac MS 224": ("rmac", (160, 224, 320)),
    "rmac MS 320": ("rmac", (224, 320, 448)),
}
#: name -> PCAReduction parameters (None: no PCA), each fitted on the collection.
POST = {
    "": None,
    "PCA32": {"n_components": 32},
    "PCAw256 s0.5": {"n_components": 256, "whiten": True, "shrinkage": 0.5},
    "PCAw256 s0.5 p0.5": {"n_components": 256, "whiten": True, "shrinkage": 0.5, "power": 0.5},
}
RERANK = (2, 2, 3.0)  # DBA k, αQE n, alpha: cbir's defaults
#: Settings built as real indexes with --index: (name, index_folder options).
INDEXED = {
    "one scale (before)": {"scales": [1.0]},
    "multi-scale (new default)": {},
}


def collection(set_name: str) -> tuple[list[Path], list[str]]:
    if set_name == "corel":
        files = corel_files()
        return files, [str(int(path.stem) // 100) for path in files]
    if set_name == "instance":
        files = sorted(instance_set().rglob("*.jpg"))
        return files, [path.parent.name for path in files]
    raise SystemExit(f"unknown set {set_name!r}")


def pooled_vectors(set_name: str, files: list[Path]) -> tuple[dict[tuple[int, str], np.ndarray], dict[int, float]]:
    """``{(side, pooling): (n, 1024) array}`` and the network's seconds per image at each side.

    Cached per side: only sides missing from the cache run the network.
    """
    folder = CACHE / "descriptors"
    folder.mkdir(parents=True, exist_ok=True)
    path = lambda side, pool: folder / f"{set_name}-{len(files)}-{side}-{pool}.npy"  # noqa: E731
    timing_file = folder / f"{set_name}-{len(files)}-seconds.json"
    seconds = {int(k): v for k, v in json.loads(timing_file.read_text()).items()} if timing_file.exists() else {}
    missing = [side for side in SIDES if side not in seconds or not all(path(side, p).exists() for p in POOLS)]
    if missing:
        from cbir.features.cnn import PAD_RGB, CNNExtractor
        from cbir.features.runtimes import NETWORKS
        from cbir.images.decode import read_image, resize_image

        extractor = CNNExtractor(weights=str(MOBILENET_WEIGHTS)).build()
        # One converted model runs every side, as the extractor's --scales does.
        networks = {side: NETWORKS[extractor.engine](extractor.tflite_model_, side) for side in missing}
        pooled = {(s, p): [] for s in missing for p in POOLS}
        spent = dict.fromkeys(missing, 0.0)
        for start in range(0, len(files), 32):
            images = [read_image(f, min_side=max(SIDES)) for f in files[start : start + 32]]
            for side in missing:
                batch = np.stack([resize_image(image, side, "squash", fill=PAD_RGB) for image in images])
                begin = time.perf_counter()
                maps = networks[side](batch)
                spent[side] += time.perf_counter() - begin
                for pool in POOLS:
                    pooled[side, pool].append(global_pool(maps, pool))
            print(f"  {set_name}: {start + len(images)}/{len(files)}", file=sys.stderr, flush=True)
        for key, parts in pooled.items():
            np.save(path(*key), np.concatenate(parts).astype(np.float32))
        seconds.update({side: value / len(files) for side, value in spent.items()})
        timing_file.write_text(json.dumps(seconds))
    return {(s, p): np.load(path(s, p)) for s in SIDES for p in POOLS}, seconds


def descriptor(pooled: dict, pooling: str, sides: tuple[int, ...]) -> np.ndarray:
    return _l2(combine_scales([pooled[side, pooling] for side in sides]))


def _l2(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def ranked_search(vectors: np.ndarray, dba: int, expand: int, alpha: float):
    """A ``search`` for :func:`leave_one_out` that ranks as a stored index with DBA and αQE does."""
    database = augment_database(vectors, dba, alpha) if dba else vectors

    def search(rows: np.ndarray) -> np.ndarray:
        queries = vectors[rows]
        if expand:
            scores = queries @ database.T
            scores[np.arange(len(rows)), rows] = -np.inf  # expansion leaves the query itself out
            top = np.argsort(-scores, axis=1, kind="stable")[:, :expand]
            queries = expand_queries(queries, database[top], np.take_along_axis(scores, top, axis=1), alpha)
        return np.argsort(-(queries @ database.T), axis=1, kind="stable")

    return search


def evaluate(vectors: np.ndarray, labels: list[str], rerank: tuple[int, int, float]) -> dict:
    report = leave_one_out(ranked_search(vectors, *rerank), len(vectors), labels, ks=(10,))
    figures = {"p@10": round(report.precision[10], 4), "map": round(report.map, 4)}
    if report.ns_score is not None:
        figures["ns"] = round(report.ns_score, 3)
    return figures


def grid(set_name: str, pooled: dict, labels: list[str], seconds: dict[int, float]) -> list[dict]:
    rows = []
    for name, (pooling, sides) in DESCRIPTORS.items():
        base = descriptor(pooled, pooling, sides)
        for post_name, params in POST.items():
            vectors = PCAReduction(**params).fit(base).transform(base) if params else base
            row = {
                "descriptor": name,
                "post": post_name or "-",
                "network_ms": round(1000 * sum(seconds[side] for side in sides), 1),
                "plain": evaluate(vectors, labels, (0, 0, 3.0)),
                "default_rerank": evaluate(vectors, labels, RERANK),
            }
            rows.append(row)
            print(f"  {set_name} {row}", file=sys.stderr, flush=True)
    return rows


def print_table(set_name: str, rows: list[dict]) -> None:
    print(f"\n{set_name}: MobileNet, plain search | default re-ranking (DBA-2 + αQE-2)")
    print(f"  {'descriptor':<14}{'post':<20}{'net ms':>7}{'P@10':>8}{'mAP':>8}{'N-S':>7} |{'P@10':>8}{'mAP':>8}{'N-S':>7}")
    for row in rows:
        cells = []
        for key in ("plain", "default_rerank"):
            q = row[key]
            ns = f"{q['ns']:7.3f}" if "ns" in q else "      -"
            cells.append(f"{q['p@10']:8.4f}{q['map']:8.4f}{ns}")
        print(f"  {row['descriptor']:<14}{row['post']:<20}{row['network_ms']:7.1f}{cells[0]} |{cells[1]}")


def indexed(set_name: str, index_dir: Path) -> dict:
    """Real indexes of the :data:`INDEXED` settings: ``evaluate_index`` figures and index seconds.

    Index time is from files to a stored index with the default DBA, the
    network built (and converted) inside it: what ``cbir index`` takes.
    """
    from cbir.evaluation.protocols import evaluate_index
    from cbir.indexing.run import index_folder

    files, _labels = collection(set_name)
    folder = files[0].parent if set_name == "corel" else files[0].parent.parent
    labels = str(COREL_LABELS) if set_name == "corel" else None
    found = {}
    for n, (name, options) in enumerate(INDEXED.items()):
        index_name = f"{set_name}-{n}"
        shutil.rmtree(index_dir / index_name, ignore_errors=True)  # timed from scratch
        begin = time.perf_counter()
        index_folder(folder, index_name, index_dir, options={"backbone": "mobilenet", "weights": str(MOBILENET_WEIGHTS), **options}, labels=labels)
        seconds = time.perf_counter() - begin
        report = evaluate_index(index_name, index_dir, ks=(10,))
        found[name] = {"p@10": round(report.precision[10], 4), "map": round(report.map, 4), "index_s": round(seconds, 1)}
        if report.ns_score is not None:
            found[name]["ns"] = round(report.ns_score, 3)
        print(f"  {set_name} index {name}: {found[name]}", file=sys.stderr, flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--sets", default="corel,instance")
    parser.add_argument("--index", action="store_true", help="also build and evaluate real indexes of the INDEXED settings")
    parser.add_argument("--no-grid", action="store_true", help="skip stage 2 (only with --index)")
    args = parser.parse_args()
    figures: dict = {"rerank": {"dba": RERANK[0], "expand": RERANK[1], "alpha": RERANK[2]}, "sets": {}}
    for set_name in args.sets.split(","):
        files, labels = collection(set_name)
        entry: dict = {"images": len(files)}
        if not args.no_grid:
            pooled, seconds = pooled_vectors(set_name, files)
            entry["network_ms_per_side"] = {side: round(1000 * s, 2) for side, s in seconds.items()}
            entry["grid"] = grid(set_name, pooled, labels, seconds)
        if args.index:
            entry["indexes"] = indexed(set_name, CACHE / "descriptor-indexes")
        figures["sets"][set_name] = entry
        if not args.json:
            if "grid" in entry:
                print_table(set_name, entry["grid"])
            for name, q in entry.get("indexes", {}).items():
                print(f"  index {name}: P@10 {q['p@10']:.4f} mAP {q['map']:.4f} N-S {q.get('ns', '-')} ({q['index_s']} s to index)")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
