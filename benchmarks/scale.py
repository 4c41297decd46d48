"""Index types at scale: build time, memory, single-query latency, recall@10 against exact search.

Two haystacks, every index type built at its defaults (as ``cbir index
--index-type TYPE`` would, through :func:`cbir.ann.vectors.build_vector_index`):

- synthetic: ``--n`` vectors (default 1,000,000 of dimension 256), clustered
  in a low-dimensional subspace like image features, with the real Corel-1k
  colour-histogram vectors mixed in (PCA to the same dimension) and appended
  last, like a new kind of photo added to a collection;
- real: ``--real-n`` colour histograms of random crops, scales and flips of
  the Corel photos (default 250,000), queried with other crops; generated
  once and cached outside the repository (``$CBIR_BENCH_CACHE``, default
  ``$TMPDIR/cbir-bench-cache``). Synthetic clusters flatter graph indexes.

For every type: build time (training + adding), size (FAISS's serialised
bytes; re-ranking reads the catalogue's vectors, which every type stores
anyway, so it adds none), single-query latency (median, p99, one query at a
time as ``cbir query`` does, re-ranking from a SQLite catalogue of the same
size included; for re-ranking types also once the catalogue has been read
through into the page cache, ``_warm``), recall@10 against exact search on both haystacks, and P@10
of the Corel queries among the whole synthetic haystack (leave-one-out) next
to exact search. ``--sweep`` adds an nprobe / efSearch sweep.

    python benchmarks/scale.py [--n 1000000] [--real-n 250000] [--types flat,hnsw,ivf,ivfpq] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
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
from _corel import COREL_LABELS, corel_files  # noqa: E402

from cbir.store.catalogue import Catalogue, NewImage  # noqa: E402
from cbir.evaluation.metrics import evaluate_rankings  # noqa: E402
from cbir.features.base import l2_normalize  # noqa: E402
from cbir.ann.vectors import VectorIndex, build_vector_index, resolve_index_type  # noqa: E402

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
    from cbir.images.decode import read_image
    from cbir.images.labels import read_labels_csv

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


def real_descriptors(n: int, n_queries: int, dim: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colour histograms of random crops, scales and flips of the Corel photos: ``(haystack, queries)``.

    Both sides are real descriptors, with the uneven density of real
    collections (many near-copies of one photo, sparse regions between
    subjects), which synthetic Gaussian clusters lack. The queries are other
    random crops, never in the haystack. Reduced by a PCA fitted on a sample
    to ``dim`` (``None``: the extractor's own 1440-d histograms, as a colour
    index stores them); cached in :func:`cache_dir` (a few minutes to generate).
    """
    cache = cache_dir() / f"corel-crops-{n}-{n_queries}-{dim}-{seed}.npz"
    if cache.is_file():
        with np.load(cache) as arrays:
            return arrays["haystack"], arrays["queries"]
    import cv2

    from cbir.features.color import ColorHistogram
    from cbir.features.pca import PCAReduction
    from cbir.images.decode import read_image

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

    reduce = (lambda rows: rows) if dim is None else PCAReduction(dim).fit(crops(min(20_000, n))).transform
    blocks = []
    for start in range(0, n + n_queries, 20_000):
        blocks.append(reduce(crops(min(20_000, n + n_queries - start))))
    vectors = np.concatenate(blocks)
    haystack, queries = vectors[:n], vectors[n:]
    temporary = cache.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(temporary, haystack=haystack, queries=queries)
    os.replace(temporary, cache)
    return haystack, queries


#: While set, latency is measured holding this lock (``--lock``), so other benchmarks' timings do not overlap.
_LOCK_FILE: str | None = None
_LOCK_WAIT = 120.0
#: When a timing ran without the lock because another benchmark held it past ``--lock-wait``.
UNLOCKED_TIMINGS: list[str] = []


def timed_single_queries(vector_index: VectorIndex, queries: np.ndarray, k: int = 10) -> tuple[list[float], np.ndarray]:
    with _bench_lock():
        return _timed_single_queries(vector_index, queries, k)


@contextlib.contextmanager
def _bench_lock():
    if _LOCK_FILE is None:
        yield
        return
    with open(_LOCK_FILE, "a") as lock:
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    # Another benchmark holds it for long: time anyway, and say so in the results.
                    UNLOCKED_TIMINGS.append(time.strftime("%H:%M:%S"))
                    yield
                    return
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _timed_single_queries(vector_index: VectorIndex, queries: np.ndarray, k: int = 10) -> tuple[list[float], np.ndarray]:
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


def build(index_type: str, vectors: np.ndarray, ids: np.ndarray, exact_vectors) -> tuple[VectorIndex, dict, float]:
    """An index of ``index_type`` at its defaults, as cbir builds it; and its build time."""
    factory, params = resolve_index_type(index_type, vectors.shape[1], len(vectors))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    vector_index = build_vector_index(
        factory,
        vectors.shape[1],
        lambda: ((ids[i : i + 65536], vectors[i : i + 65536]) for i in range(0, len(vectors), 65536)),
        lambda n: vectors[np.sort(rng.choice(len(vectors), size=min(n, len(vectors)), replace=False))],
    )
    seconds = time.perf_counter() - started
    vector_index.exact_vectors = exact_vectors
    vector_index.set_search_params(params)
    return vector_index, params, seconds


def array_lookup(ids: np.ndarray, vectors: np.ndarray):
    """``exact_vectors`` over arrays whose ids are consecutive from ``ids[0]``."""

    def lookup(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return wanted, vectors[wanted - ids[0]]

    return lookup


def fill_catalogue(catalogue: Catalogue, vectors: np.ndarray, log) -> float:
    started = time.perf_counter()
    block = 50_000
    for start in range(0, len(vectors), block):
        with catalogue.transaction():
            catalogue.add_images(
                [
                    NewImage(f"/photos/{i // 1000:04d}/{i:07d}.jpg", 100_000, 0, "0" * 64, None, vectors[i])
                    for i in range(start, min(start + block, len(vectors)))
                ],
                vectors.shape[1],
            )
    log(f"catalogue: {len(vectors):,} rows ({time.perf_counter() - started:.0f} s)")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the synthetic haystack")
    parser.add_argument("--real-n", type=int, default=250_000, help="real descriptors (Corel crops) in the second haystack")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries on each haystack")
    parser.add_argument("--types", default="flat,hnsw,ivf,ivfpq", help="comma-separated index types")
    parser.add_argument("--sweep", action="store_true", help="also sweep nprobe / efSearch")
    parser.add_argument(
        "--lock",
        metavar="FILE",
        help="hold an flock on FILE only while timing queries (e.g. /tmp/cbir-bench.lock on a shared machine); "
        "builds then run alongside other work, and their times say so",
    )
    parser.add_argument("--lock-wait", type=float, default=120.0, help="seconds to wait for --lock before timing anyway (reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    global _LOCK_FILE, _LOCK_WAIT
    _LOCK_FILE, _LOCK_WAIT = args.lock, args.lock_wait
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    started = time.perf_counter()
    corel, labels = corel_vectors(args.dim)
    clusters = max(10, args.n // 1000)
    haystack = synthetic(args.n - len(corel), args.dim, seed=0, clusters=clusters)
    vectors = np.concatenate([haystack, corel])
    del haystack
    queries = synthetic(args.queries, args.dim, seed=1, clusters=clusters)
    real, real_queries = real_descriptors(args.real_n, args.queries, args.dim)
    log(f"data: {len(vectors):,} synthetic + {len(real):,} real vectors of dimension {args.dim} ({time.perf_counter() - started:.0f} s)")

    folder = tempfile.TemporaryDirectory(dir=cache_dir())
    catalogue = Catalogue(Path(folder.name) / "catalogue.sqlite", create=True)
    fill_seconds = fill_catalogue(catalogue, vectors, log)
    ids = np.arange(1, 1 + len(vectors), dtype=np.int64)  # the catalogue's ids
    assert catalogue.max_id() == ids[-1]
    corel_ids = ids[-len(corel) :]
    real_ids = np.arange(1, 1 + len(real), dtype=np.int64)

    exact = VectorIndex.create("Flat", args.dim)
    exact.add(ids, vectors)
    _scores, truth = exact.index.search(queries, 10)
    exact_real = VectorIndex.create("Flat", args.dim)
    exact_real.add(real_ids, real)
    _scores, real_truth = exact_real.index.search(real_queries, 10)
    del exact_real
    exact_corel = corel_precision(exact, corel, corel_ids, labels)
    log("ground truth: exact search done")

    results = {"n": len(vectors), "real_n": len(real), "dim": args.dim, "queries": len(queries), "exact_corel_p@10": round(exact_corel, 4), "types": {}}
    for index_type in [t.strip() for t in args.types.split(",") if t.strip()]:
        if index_type == "flat":
            vector_index, params, build_seconds = exact, {}, 0.0
            factory = "Flat"
        else:
            vector_index, params, build_seconds = build(index_type, vectors, ids, lambda w: catalogue.vectors_by_id(w, args.dim))
            factory = vector_index.factory
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
        if vector_index.rerank and vector_index.exact_vectors is not None:
            # The first pass reads the candidates' vectors from a catalogue
            # partly out of the page cache (evicted while other indexes were
            # built); a server settles with the catalogue cached: read it
            # through once (as a server could at start) and time again.
            warm_started = time.perf_counter()
            for _block in catalogue.iter_vectors(args.dim):
                pass
            warm_lat, _found = timed_single_queries(vector_index, queries)
            entry["catalogue_read_seconds"] = round(time.perf_counter() - warm_started - sum(warm_lat) / 1000, 1)
            entry["latency_ms_median_warm"] = round(statistics.median(warm_lat), 3)
            entry["latency_ms_p99_warm"] = round(percentile(warm_lat, 99), 3)
        if args.sweep:
            entry["sweep"] = sweep(vector_index, params, queries, truth, corel, corel_ids, labels)
            vector_index.set_search_params(params)
        if vector_index is not exact:
            del vector_index
        if index_type == "flat":
            entry["real_recall@10"] = 1.0
        else:
            real_index, _params, real_build = build(index_type, real, real_ids, array_lookup(real_ids, real))
            _lat, real_found = timed_single_queries(real_index, real_queries)
            entry["real_recall@10"] = round(recall_at(real_found, real_truth), 4)
            entry["real_factory"] = real_index.factory
            entry["real_build_seconds"] = round(real_build, 1)
            del real_index
        entry["timed_without_lock"] = bool(UNLOCKED_TIMINGS)
        UNLOCKED_TIMINGS.clear()
        results["types"][index_type] = entry
        log(f"{index_type}: {json.dumps(entry)}")

    lookups = []
    rng = np.random.default_rng(2)
    for _ in range(1000):
        wanted = (rng.integers(0, len(vectors), size=10) + 1).tolist()
        t = time.perf_counter()
        rows = catalogue.image_rows(wanted)
        lookups.append((time.perf_counter() - t) * 1000)
        assert len(rows) == 10
    catalogue.close()
    folder.cleanup()
    results["catalogue"] = {
        "rows": len(vectors),
        "fill_seconds": round(fill_seconds, 1),
        "lookup_10_paths_ms_median": round(statistics.median(lookups), 3),
        "lookup_10_paths_ms_p99": round(percentile(lookups, 99), 3),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    report(results)


def sweep(vector_index, params, queries, truth, corel, corel_ids, labels) -> list[dict]:
    name = "nprobe" if "nprobe" in params else "ef_search" if "ef_search" in params else None
    points = []
    for value in SWEEPS.get(name, []):
        vector_index.set_search_params({name: value})
        lat, got = timed_single_queries(vector_index, queries[:300])
        points.append(
            {
                name: value,
                "latency_ms_median": round(statistics.median(lat), 3),
                "recall@10": round(recall_at(got, truth[:300]), 4),
                "corel_p@10": round(corel_precision(vector_index, corel, corel_ids, labels), 4),
            }
        )
    return points


def report(results: dict) -> None:
    flat_mb = results["types"].get("flat", {}).get("index_mb")
    print(
        f"\nsynthetic: {results['n']:,} x {results['dim']}; real (Corel crops): {results['real_n']:,}; "
        f"{results['queries']} single queries each, k=10; exact Corel P@10 {results['exact_corel_p@10']:.4f}"
    )
    print(
        f"{'type':6} {'factory':18} {'params':28} {'build s':>8} {'MB':>7} {'of flat':>7} {'median ms':>9} {'p99 ms':>7} "
        f"{'recall@10':>9} {'real rec@10':>11} {'Corel P@10':>10}"
    )
    for name, e in results["types"].items():
        params = ",".join(f"{k}={v}" for k, v in e["search_params"].items())
        share = f"{e['index_mb'] / flat_mb:7.2f}" if flat_mb else f"{'':7}"
        print(
            f"{name:6} {e['factory']:18} {params:28} {e['build_seconds']:8.1f} {e['index_mb']:7.0f} {share} "
            f"{e['latency_ms_median']:9.3f} {e['latency_ms_p99']:7.3f} {e['recall@10']:9.4f} {e['real_recall@10']:11.4f} "
            f"{e['corel_p@10']:10.4f}" + ("  (timed while another benchmark held the lock)" if e.get("timed_without_lock") else "")
        )
        if "latency_ms_median_warm" in e:
            print(f"{'':6}   catalogue in the page cache: median {e['latency_ms_median_warm']:.3f} ms, p99 {e['latency_ms_p99_warm']:.3f} ms")
        for point in e.get("sweep", []):
            knob = next(k for k in point if k in SWEEPS)
            print(
                f"{'':6}   {knob}={point[knob]:<5} median {point['latency_ms_median']:.3f} ms, "
                f"recall@10 {point['recall@10']:.4f}, Corel P@10 {point['corel_p@10']:.4f}"
            )
    c = results["catalogue"]
    print(f"catalogue of {c['rows']:,} rows: 10 result paths in {c['lookup_10_paths_ms_median']} ms median ({c['lookup_10_paths_ms_p99']} ms p99)")


if __name__ == "__main__":
    main()
