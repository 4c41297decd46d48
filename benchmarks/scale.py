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

Nothing holds the synthetic haystack: it is generated block by block, each
block from its own seed, on every pass (catalogue, exact ground truth, a
training sample, an index fill), so the building process's memory does not
follow ``--n`` beyond what the index types themselves hold (docs/scale.md).
Exact ground truth is a blockwise top-k merge (``faiss.knn`` per block).

The ``--query-type`` (default ``ivfpq``) is written as a real index folder,
as ``cbir index`` leaves it (catalogue filled in blocks, the library's own
snapshot); a fresh process (``benchmarks/_scale_query.py``) then opens it
through :class:`cbir.retrieval.search.Searcher` and reports its peak RSS,
median latency first and once warm, and recall@10. Other types are built in
this process from the blocks. Peak RSS of this process after each step, and
the index folder's disk use per image, are reported too.

For every type: build time (training + adding), size (FAISS's serialised
bytes; re-ranking reads the catalogue's vectors, which every type stores
anyway, so it adds none), single-query latency (median, p99, one query at a
time as ``cbir query`` does, re-ranking from the SQLite catalogue included;
for re-ranking types also once the catalogue has been read through into the
page cache, ``_warm``), recall@10 against exact search on both haystacks,
and P@10 of the Corel queries among the whole synthetic haystack
(leave-one-out) next to exact search. ``--sweep`` adds an nprobe / efSearch
sweep; ``--real-n 0`` leaves the real haystack out.

    python benchmarks/scale.py [--n 1000000] [--real-n 250000] [--types flat,hnsw,ivf,ivfpq] [--query-type ivfpq] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scale_data import SyntheticHaystack, cache_dir, corel_vectors, exact_neighbours, real_descriptors, synthetic  # noqa: E402,F401

from cbir.store.catalogue import NewImage  # noqa: E402
from cbir.evaluation.metrics import evaluate_rankings  # noqa: E402
from cbir.ann.vectors import VectorIndex, build_vector_index, resolve_index_type  # noqa: E402
from cbir.store.writer import open_writer  # noqa: E402

SWEEPS = {"nprobe": [8, 16, 32, 64, 128], "ef_search": [16, 32, 64, 128, 256, 512]}


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


def corel_precision(ids: np.ndarray, corel_ids: np.ndarray, labels: list[str]) -> float:
    """P@10 of the Corel queries among the whole haystack, from each one's 11 best ids (itself left out)."""
    row_of = {int(i): n for n, i in enumerate(corel_ids)}
    rankings = np.array([[row_of.get(int(i), -1) for i in row if int(i) != corel_ids[q]][:10] for q, row in enumerate(ids)])
    return evaluate_rankings(rankings, labels, ks=(10,)).precision[10]


def build(index_type: str, blocks, sample, dim: int, count: int, exact_vectors) -> tuple[VectorIndex, dict, float]:
    """An index of ``index_type`` at its defaults, as cbir builds it, filled from ``blocks()``; and its build time."""
    factory, params = resolve_index_type(index_type, dim, count)
    started = time.perf_counter()
    vector_index = build_vector_index(factory, dim, blocks, sample, count)
    seconds = time.perf_counter() - started
    vector_index.exact_vectors = exact_vectors
    vector_index.set_search_params(params)
    return vector_index, params, seconds


def array_lookup(ids: np.ndarray, vectors: np.ndarray):
    """``exact_vectors`` over arrays whose ids are consecutive from ``ids[0]``."""

    def lookup(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return wanted, vectors[wanted - ids[0]]

    return lookup


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (ru_maxrss, kB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def embedder_of_dim(dim: int):
    """A fitted embedder whose vectors have ``dim`` dimensions (colour histograms, PCA): what the index records.
    The benchmark never embeds an image with it; queries are vectors."""
    from cbir.features.base import make_extractor
    from cbir.features.pca import PCAReduction
    from cbir.features.pipeline import Embedder

    extractor = make_extractor("color")
    rows = np.abs(np.random.default_rng(0).standard_normal((max(2 * dim, 512), extractor.dim))).astype(np.float32)
    return Embedder(extractor, PCAReduction(dim).fit(rows))


def write_index(folder: Path, haystack: SyntheticHaystack, index_type: str, log) -> dict:
    """An index folder as ``cbir index`` leaves it: catalogue filled block by block, then the library's own
    snapshot (trained on a sample, filled from the catalogue's vectors in blocks). Times and peak RSS of each step."""
    started = time.perf_counter()
    figures = {}
    with open_writer(folder) as writer:
        writer.create(embedder_of_dim(haystack.dim), index_type, len(haystack), dba=None)
        for ids, vectors in haystack.blocks():
            for start in range(0, len(ids), 50_000):
                writer.add(
                    [
                        NewImage(f"/photos/{i // 1000:05d}/{i:08d}.jpg", 100_000, 0, "0" * 64, None, vectors[n])
                        for n, i in enumerate(ids[start : start + 50_000].tolist(), start)
                    ]
                )
        figures["fill_seconds"] = round(time.perf_counter() - started, 1)
        figures["peak_rss_mb_after_fill"] = peak_rss_mb()
        log(f"catalogue: {len(haystack):,} rows ({figures['fill_seconds']:.0f} s)")
        started = time.perf_counter()
        writer.finish()
    figures["snapshot_seconds"] = round(time.perf_counter() - started, 1)
    figures["peak_rss_mb_after_snapshot"] = peak_rss_mb()
    log(f"snapshot ({index_type}): {figures['snapshot_seconds']:.0f} s")
    return figures


def snapshot_bytes(store) -> int:
    from cbir.store.snapshot_record import read_state

    return (store.path / read_state(store).file).stat().st_size


def disk_usage(folder: Path, images: int) -> dict:
    """Bytes of the index folder by kind, and per image."""
    kinds = {"catalogue": 0, "faiss": 0, "other": 0}
    for file in folder.rglob("*"):
        if file.is_file():
            name = file.name
            kind = "catalogue" if name.startswith("catalogue") else "faiss" if name.endswith(".faiss") else "other"
            kinds[kind] += file.stat().st_size
    return {**{f"{k}_bytes": v for k, v in kinds.items()}, **{f"{k}_bytes_per_image": round(v / images, 1) for k, v in kinds.items()}}


def query_process(folder: Path, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Figures of a fresh process that opens ``folder`` through the library and answers ``queries``."""
    np.save(folder.parent / "queries.npy", queries)
    np.save(folder.parent / "truth.npy", truth)
    script = Path(__file__).resolve().parent / "_scale_query.py"
    out = subprocess.run(
        [sys.executable, str(script), str(folder), str(folder.parent / "queries.npy"), str(folder.parent / "truth.npy")],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the synthetic haystack")
    parser.add_argument("--real-n", type=int, default=250_000, help="real descriptors (Corel crops) in the second haystack (0: none)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries on each haystack")
    parser.add_argument("--types", default="flat,hnsw,ivf,ivfpq", help="comma-separated index types")
    parser.add_argument(
        "--query-type",
        help="the type written as an index folder (as cbir index would) and queried by a separate process "
        "(default: ivfpq if listed, else the last type)",
    )
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
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    query_type = args.query_type or ("ivfpq" if "ivfpq" in types else types[-1])
    if query_type not in types:
        types.append(query_type)

    started = time.perf_counter()
    corel, labels = corel_vectors(args.dim)
    clusters = max(10, args.n // 1000)
    haystack = SyntheticHaystack(args.n - len(corel), args.dim, clusters, corel)  # generated block by block, never held
    corel_ids = np.arange(haystack.n_synthetic + 1, len(haystack) + 1, dtype=np.int64)
    queries = synthetic(args.queries, args.dim, seed=1, clusters=clusters)
    if args.real_n:
        real, real_queries = real_descriptors(args.real_n, args.queries, args.dim)
    else:
        real, real_queries = np.zeros((0, args.dim), np.float32), np.zeros((0, args.dim), np.float32)
    real_ids = np.arange(1, 1 + len(real), dtype=np.int64)
    log(f"data: {len(haystack):,} synthetic (in blocks) + {len(real):,} real vectors of dimension {args.dim} ({time.perf_counter() - started:.0f} s)")
    memory = {"peak_rss_mb_after_data": peak_rss_mb()}

    started = time.perf_counter()
    both = exact_neighbours(haystack.blocks(), np.concatenate([queries, corel]), 11)  # one pass: queries and Corel
    truth, corel_truth = both[: len(queries), :10], both[len(queries) :]
    real_truth = exact_neighbours([(real_ids, real)], real_queries, 10) if len(real) else None
    exact_corel = corel_precision(corel_truth, corel_ids, labels)
    truth_seconds = time.perf_counter() - started
    memory["peak_rss_mb_after_truth"] = peak_rss_mb()
    log(f"ground truth: blockwise exact search done ({truth_seconds:.0f} s)")

    folder = tempfile.TemporaryDirectory(dir=cache_dir())
    index_folder = Path(folder.name) / "index"
    written = write_index(index_folder, haystack, query_type, log)
    memory.update({k: v for k, v in written.items() if k.startswith("peak")})
    from cbir.store.directory import IndexStore
    from cbir.store.snapshots import load_vectors

    store = IndexStore.open(index_folder)
    catalogue = store.catalogue
    ids_seen = catalogue.max_id()
    assert ids_seen == len(haystack), (ids_seen, len(haystack))

    results = {
        "n": len(haystack), "real_n": len(real), "dim": args.dim, "queries": len(queries), "query_type": query_type,
        "exact_corel_p@10": round(exact_corel, 4), "ground_truth_seconds": round(truth_seconds, 1), "types": {},
    }
    for index_type in types:
        if index_type == query_type:
            vector_index = load_vectors(store).index  # the library's own snapshot, as a reader opens it
            params = dict(store.manifest.get("search_params") or {})
            vector_index.set_search_params(params)
            build_seconds = written["snapshot_seconds"]
        else:
            vector_index, params, build_seconds = build(
                index_type, haystack.blocks, haystack.sample, args.dim, len(haystack), lambda w: catalogue.vectors_by_id(w, args.dim)
            )
        latencies, found = timed_single_queries(vector_index, queries)
        _scores, corel_found = vector_index.search(corel, 11)
        entry = {
            "factory": vector_index.factory,
            "search_params": params,
            "build_seconds": round(build_seconds, 1),
            # A mapped snapshot serialises without its lists: count the file.
            "index_mb": round(
                (snapshot_bytes(store) if getattr(vector_index, "mapped", False) else faiss.serialize_index(vector_index.index).nbytes) / 2**20, 1
            ),
            "latency_ms_median": round(statistics.median(latencies), 3),
            "latency_ms_p99": round(percentile(latencies, 99), 3),
            "recall@10": round(recall_at(found, truth), 4),
            "corel_p@10": round(corel_precision(corel_found, corel_ids, labels), 4),
            "peak_rss_mb_after_build": peak_rss_mb(),
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
        del vector_index
        if index_type == "flat" or not len(real):
            entry["real_recall@10"] = 1.0 if index_type == "flat" else None
        else:
            rng = np.random.default_rng(0)
            real_index, _params, real_build = build(
                index_type,
                lambda: ((real_ids[i : i + 65536], real[i : i + 65536]) for i in range(0, len(real), 65536)),
                lambda n: real[np.sort(rng.choice(len(real), size=min(n, len(real)), replace=False))],
                args.dim, len(real), array_lookup(real_ids, real),
            )
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
        wanted = (rng.integers(0, len(haystack), size=10) + 1).tolist()
        t = time.perf_counter()
        rows = catalogue.image_rows(wanted)
        lookups.append((time.perf_counter() - t) * 1000)
        assert len(rows) == 10
    store.close()
    memory["peak_rss_mb"] = peak_rss_mb()
    with _bench_lock():
        results["query_process"] = query_process(index_folder, queries, truth)
    log(f"query process: {json.dumps(results['query_process'])}")
    results["disk"] = disk_usage(index_folder, len(haystack))
    folder.cleanup()
    results["build_process"] = memory
    results["catalogue"] = {
        "rows": len(haystack),
        "fill_seconds": written["fill_seconds"],
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
                "corel_p@10": round(corel_precision(vector_index.search(corel, 11)[1], corel_ids, labels), 4),
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
            f"{e['latency_ms_median']:9.3f} {e['latency_ms_p99']:7.3f} {e['recall@10']:9.4f} "
            f"{e['real_recall@10'] if e['real_recall@10'] is not None else float('nan'):11.4f} "
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
    b, q, d = results["build_process"], results["query_process"], results["disk"]
    print(
        f"building process peak RSS: {b['peak_rss_mb']:,.0f} MB (after data {b['peak_rss_mb_after_data']:,.0f}, ground truth "
        f"{b['peak_rss_mb_after_truth']:,.0f}, catalogue {b['peak_rss_mb_after_fill']:,.0f}, {results['query_type']} snapshot "
        f"{b['peak_rss_mb_after_snapshot']:,.0f})"
    )
    print(
        f"query process ({q['factory']}, lists {'memory-mapped' if q['mapped'] else 'read'}): peak RSS {q['peak_rss_mb']:,.0f} MB "
        f"(open {q['open_seconds']} s), median {q['latency_ms_median_first']:.3f} ms first pass, {q['latency_ms_median_warm']:.3f} ms warm "
        f"(p99 {q['latency_ms_p99_warm']:.3f}), recall@10 {q['recall@10']:.4f}; cbir query's answer (expansion on) "
        f"{q['query_answer_ms_median_warm']:.3f} ms warm; the same snapshot read whole: {q['latency_ms_median_read_whole']} ms"
    )
    print(
        f"disk per image: catalogue {d['catalogue_bytes_per_image']:,.0f} B, FAISS {d['faiss_bytes_per_image']:,.0f} B, "
        f"other {d['other_bytes_per_image']:,.1f} B ({(d['catalogue_bytes'] + d['faiss_bytes'] + d['other_bytes']) / 2**30:.2f} GiB in all)"
    )
    c = results["catalogue"]
    print(f"catalogue of {c['rows']:,} rows: 10 result paths in {c['lookup_10_paths_ms_median']} ms median ({c['lookup_10_paths_ms_p99']} ms p99)")


if __name__ == "__main__":
    main()
