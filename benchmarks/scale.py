"""Index types at scale: build time, memory, single-query latency, recall@10 against exact search.

A haystack of ``--n`` synthetic vectors (default 1,000,000 of dimension 256,
clustered with a decaying spectrum like real image features) with the real
Corel-1k colour-histogram vectors mixed in (PCA to the same dimension), so
retrieval quality can be checked where labels exist. For every index type:

- build time (training + adding), size of the index (FAISS's serialised bytes);
- single-query latency, median and p99, one query at a time as ``cbir query`` does;
- recall@10 against exact search, on held-out synthetic queries;
- P@10 of the Corel queries among the whole haystack (leave-one-out), next to exact search;
- a sweep of nprobe / efSearch, to show the latency-recall trade-off.

Finally the catalogue lookup of result paths in a SQLite catalogue of the
same size (median over the queries).

    python benchmarks/scale.py [--n 1000000] [--types flat,hnsw,ivf,ivfpq] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL, COREL_LABELS, corel_files  # noqa: E402

from cbir.catalogue import Catalogue, NewImage  # noqa: E402
from cbir.evaluate import evaluate_rankings  # noqa: E402
from cbir.features.base import l2_normalize  # noqa: E402
from cbir.vectors import VectorIndex, resolve_index_type  # noqa: E402

SWEEPS = {"nprobe": [8, 16, 32, 64, 128], "ef_search": [16, 32, 64, 128, 256, 512]}


def synthetic(n: int, dim: int, seed: int, clusters: int, intrinsic: int = 32) -> np.ndarray:
    """Unit vectors shaped like image descriptors: clusters in a low-dimensional subspace, plus noise.

    Real features have a low intrinsic dimension (a few dozen) inside their
    ambient space; here Gaussian clusters live in ``intrinsic`` latent
    dimensions, mapped into ``dim`` by a fixed orthonormal basis (the same
    for every seed, so queries share the haystack's subspace), with a little
    isotropic noise on top.
    """
    basis, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, intrinsic)))
    basis = basis.T.astype(np.float32)
    centre_rng, rng = np.random.default_rng(54321), np.random.default_rng(seed)
    centres = centre_rng.standard_normal((clusters, intrinsic), dtype=np.float32)
    widths = centre_rng.uniform(0.3, 0.8, size=clusters).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(0, clusters, size=stop - start)
        latent = centres[which] + rng.standard_normal((stop - start, intrinsic), dtype=np.float32) * widths[which, None]
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.05
        out[start:stop] = l2_normalize(latent @ basis + noise)
    return out


def corel_vectors(dim: int) -> tuple[np.ndarray, list[str]]:
    """Colour-histogram vectors of Corel-1k, PCA-reduced to ``dim``, and their labels."""
    from cbir.features.color import ColorHistogram
    from cbir.features.pca import PCAReduction
    from cbir.images import read_image
    from cbir.labels import read_labels_csv

    extractor = ColorHistogram()
    files = corel_files()
    raw = extractor.transform([read_image(p, extractor.decode_min_side) for p in files])
    labels_by_path = read_labels_csv(COREL_LABELS)
    return PCAReduction(dim).fit(raw).transform(raw), [labels_by_path[str(p)] for p in files]


def cache_dir() -> Path:
    """Where generated data is kept between runs: outside the repository."""
    folder = Path(os.environ.get("CBIR_BENCH_CACHE") or Path(tempfile.gettempdir()) / "cbir-bench-cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def real_descriptors(n: int, n_queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colour histograms of random crops, scales and flips of the Corel photos: ``(haystack, queries)``.

    Both sides are real descriptors, with the uneven density of real
    collections (many near-copies of one photo, sparse regions between
    subjects), which synthetic Gaussian clusters lack. The queries are other
    random crops, never in the haystack. Reduced by a PCA fitted on a sample
    to ``dim``; cached in :func:`cache_dir` (a few minutes to generate).
    """
    cache = cache_dir() / f"corel-crops-{n}-{n_queries}-{dim}-{seed}.npz"
    if cache.is_file():
        with np.load(cache) as arrays:
            return arrays["haystack"], arrays["queries"]
    import cv2

    from cbir.features.color import ColorHistogram
    from cbir.features.pca import PCAReduction
    from cbir.images import read_image

    photos = [read_image(p, 128) for p in corel_files()]
    rng = np.random.default_rng(seed)

    def crops(count: int) -> np.ndarray:
        extractor = ColorHistogram()  # fresh per block: its region-map cache grows with crop shapes
        out = np.empty((count, extractor.dim), dtype=np.float32)
        for i in range(count):
            photo = photos[rng.integers(len(photos))]
            h, w = photo.shape[:2]
            ch, cw = (int(side * rng.uniform(0.4, 1.0)) // 8 * 8 or 8 for side in (h, w))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = photo[y : y + ch, x : x + cw]
            scale = rng.uniform(0.5, 1.0)
            crop = cv2.resize(crop, (max(8, int(cw * scale)) // 8 * 8, max(8, int(ch * scale)) // 8 * 8), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[i] = extractor.prepare(np.ascontiguousarray(crop))
        return out

    pca = PCAReduction(dim).fit(crops(min(20_000, n)))
    blocks = []
    for start in range(0, n + n_queries, 20_000):
        blocks.append(pca.transform(crops(min(20_000, n + n_queries - start))))
    vectors = np.concatenate(blocks)
    haystack, queries = vectors[:n], vectors[n:]
    temporary = cache.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(temporary, haystack=haystack, queries=queries)
    os.replace(temporary, cache)
    return haystack, queries


def timed_single_queries(vector_index: VectorIndex, queries: np.ndarray, k: int = 10) -> tuple[list[float], np.ndarray]:
    latencies, found = [], []
    for q in queries:
        started = time.perf_counter()
        _scores, ids = vector_index.search(q[None, :], k)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    return latencies, np.array(found)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def corel_precision(vector_index: VectorIndex, corel: np.ndarray, corel_ids: np.ndarray, labels: list[str]) -> float:
    _scores, ids = vector_index.search(corel, 11)
    row_of = {int(i): n for n, i in enumerate(corel_ids)}
    rankings = np.array([[row_of.get(int(i), -1) for i in row if int(i) != corel_ids[q]][:10] for q, row in enumerate(ids)])
    return evaluate_rankings(rankings, labels, ks=(10,)).precision[10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the haystack")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000, help="held-out synthetic queries")
    parser.add_argument("--types", default="flat,hnsw,ivf,ivfpq", help="comma-separated index types")
    parser.add_argument("--no-sweep", action="store_true", help="skip the nprobe/efSearch sweep")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    started = time.perf_counter()
    corel, labels = corel_vectors(args.dim)
    clusters = max(10, args.n // 1000)
    haystack = synthetic(args.n - len(corel), args.dim, seed=0, clusters=clusters)
    vectors = np.concatenate([haystack, corel])
    del haystack
    ids = np.arange(10, 10 + len(vectors), dtype=np.int64)  # catalogue-like ids, not row numbers
    corel_ids = ids[-len(corel) :]
    queries = synthetic(args.queries, args.dim, seed=1, clusters=clusters)
    log(f"data: {len(vectors):,} vectors of dimension {args.dim} ({time.perf_counter() - started:.0f} s)")

    exact = VectorIndex.create("Flat", args.dim)
    exact.add(ids, vectors)
    _scores, truth = exact.index.search(queries, 10)
    log("ground truth: exact search done")

    results = {"n": len(vectors), "dim": args.dim, "queries": len(queries), "types": {}}
    for index_type in [t.strip() for t in args.types.split(",") if t.strip()]:
        factory, params = resolve_index_type(index_type, args.dim, len(vectors))
        started = time.perf_counter()
        if index_type == "flat":
            vector_index = exact
        else:
            vector_index = VectorIndex.create(factory, args.dim)
            if not vector_index.is_trained:
                sample = vectors[np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 256 * 1024), replace=False)]
                vector_index.train(sample)
            vector_index.add(ids, vectors)
        build_seconds = time.perf_counter() - started
        vector_index.set_search_params(params)
        latencies, found = timed_single_queries(vector_index, queries)
        entry = {
            "factory": factory,
            "search_params": params,
            "build_seconds": round(build_seconds, 1),
            "index_mb": round(faiss.serialize_index(vector_index.index).nbytes / 2**20, 1),
            "latency_ms_median": round(statistics.median(latencies), 3),
            "latency_ms_p99": round(percentile(latencies, 99), 3),
            "recall@10": round(recall_at(found, truth), 4),
            "corel_p@10": round(corel_precision(vector_index, corel, corel_ids, labels), 4),
        }
        sweep_name = "nprobe" if "nprobe" in params else "ef_search" if "ef_search" in params else None
        if sweep_name and not args.no_sweep:
            entry["sweep"] = []
            for value in SWEEPS[sweep_name]:
                vector_index.set_search_params({sweep_name: value})
                lat, got = timed_single_queries(vector_index, queries[:300])
                entry["sweep"].append(
                    {
                        sweep_name: value,
                        "latency_ms_median": round(statistics.median(lat), 3),
                        "recall@10": round(recall_at(got, truth[:300]), 4),
                        "corel_p@10": round(corel_precision(vector_index, corel, corel_ids, labels), 4),
                    }
                )
            vector_index.set_search_params(params)
        results["types"][index_type] = entry
        log(f"{index_type}: {json.dumps(entry)}")
        if vector_index is not exact:
            del vector_index

    # Catalogue lookup of result paths at the same scale.
    with tempfile.TemporaryDirectory() as folder:
        catalogue = Catalogue(Path(folder) / "catalogue.sqlite", create=True)
        started = time.perf_counter()
        block = 50_000
        for start in range(0, len(vectors), block):
            with catalogue.transaction():
                catalogue.add_images(
                    [
                        NewImage(f"/photos/{i // 1000:04d}/{i:07d}.jpg", 100_000, 0, "0" * 64, None, vectors[i])
                        for i in range(start, min(start + block, len(vectors)))
                    ],
                    args.dim,
                )
        fill_seconds = time.perf_counter() - started
        row_ids = catalogue.image_rows([1])[0].id
        lookups = []
        rng = np.random.default_rng(2)
        for _ in range(1000):
            wanted = (rng.integers(0, len(vectors), size=10) + row_ids).tolist()
            t = time.perf_counter()
            rows = catalogue.image_rows(wanted)
            lookups.append((time.perf_counter() - t) * 1000)
            assert len(rows) == 10
        catalogue.close()
    results["catalogue"] = {
        "rows": len(vectors),
        "fill_seconds": round(fill_seconds, 1),
        "lookup_10_paths_ms_median": round(statistics.median(lookups), 3),
        "lookup_10_paths_ms_p99": round(percentile(lookups, 99), 3),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"\n{results['n']:,} vectors x {results['dim']}, {results['queries']} single queries, k=10")
    print(f"{'type':8} {'factory':22} {'params':18} {'build s':>8} {'MB':>8} {'median ms':>10} {'p99 ms':>8} {'recall@10':>10} {'Corel P@10':>11}")
    for name, e in results["types"].items():
        params = ",".join(f"{k}={v}" for k, v in e["search_params"].items())
        print(
            f"{name:8} {e['factory']:22} {params:18} {e['build_seconds']:8.1f} {e['index_mb']:8.1f} "
            f"{e['latency_ms_median']:10.3f} {e['latency_ms_p99']:8.3f} {e['recall@10']:10.4f} {e['corel_p@10']:11.4f}"
        )
        for point in e.get("sweep", []):
            knob = next(k for k in point if k in SWEEPS)
            print(
                f"{'':8}   {knob}={point[knob]:<5} median {point['latency_ms_median']:.3f} ms, "
                f"recall@10 {point['recall@10']:.4f}, Corel P@10 {point['corel_p@10']:.4f}"
            )
    c = results["catalogue"]
    print(f"catalogue of {c['rows']:,} rows: 10 result paths in {c['lookup_10_paths_ms_median']} ms median ({c['lookup_10_paths_ms_p99']} ms p99)")


if __name__ == "__main__":
    main()
