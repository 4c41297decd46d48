"""Filtered and multi-example search: latency against a plain query, k returned by approximate types, P@10.

1. Latency, in process, on a Corel-1k colour index (flat): a plain search by
   id, the same kept to one label (10% of the images), three examples by id,
   and by upload (image bytes) a plain query, a filtered one and one with
   three examples. Median of ``--repeats`` runs; the ratio to the plain one.
2. Approximate types (flat, hnsw, ivf, ivfpq) on ``--synthetic`` clustered
   vectors: for filters letting 50%, 10%, 1% and 0.1% through, how often
   FAISS's IDSelector alone returns k = 10 results, the recall@10 of the
   final answer against an exact filtered search, and the alternative of
   over-fetching (search k / selectivity * 2 without a filter, keep the
   allowed ones): how often it returns k.
3. Corel-1k P@10 (colour index, leave-one-out): one positive against two of
   the same class (the second drawn at random), examples left out.

    flock /tmp/cbir-bench.lock python benchmarks/search_filters.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL_LABELS, corel_files  # noqa: E402

from cbir.ann.vectors import build_vector_index, resolve_index_type  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.retrieval.examples import Example  # noqa: E402
from cbir.retrieval.filtered import AllowedIds, filtered_search  # noqa: E402
from cbir.retrieval.search import Searcher  # noqa: E402
from cbir.store.catalogue import ImageFilter  # noqa: E402


def _median_ms(run, repeats: int) -> float:
    run()  # warm: model, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latency(searcher: Searcher, files, repeats: int) -> dict:
    rows = searcher.image_rows()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(rows), 3, replace=False)
    ids = [rows[n].id for n in picks]
    horses = ImageFilter(label="horses")
    data = [files[n].read_bytes() for n in picks]
    cases = {
        "id: plain": lambda: searcher.query_id(ids[0], 10),
        "id: label filter": lambda: searcher.query_id(ids[0], 10, image_filter=horses),
        "id: three examples": lambda: searcher.query_examples([Example(i) for i in ids], k=10),
        "id: three examples + filter": lambda: searcher.query_examples([Example(i) for i in ids], k=10, image_filter=horses),
        "upload: plain": lambda: searcher.query(data[0], 10),
        "upload: label filter": lambda: searcher.query(data[0], 10, image_filter=horses),
        "upload: three examples": lambda: searcher.query_examples([Example(d) for d in data], k=10),
    }
    out = {name: _median_ms(run, repeats) for name, run in cases.items()}
    return {name: {"ms": round(ms, 3), "ratio": round(ms / out[name.split(":")[0] + ": plain"], 2)} for name, ms in out.items()}


def approximate(n: int, dim: int = 64, k: int = 10, n_queries: int = 200) -> list[dict]:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(200, dim))
    vectors = centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    queries = vectors[rng.choice(n, n_queries, replace=False)]
    lookup = lambda wanted: vectors[wanted]  # noqa: E731 - ids are row numbers here
    out = []
    for kind in ("flat", "hnsw", "ivf", "ivfpq"):
        factory, params = resolve_index_type(kind, dim, n)
        index = build_vector_index(factory, dim, lambda: [(ids, vectors)], lambda m: vectors[rng.choice(n, min(m, n), replace=False)])
        index.set_search_params(params)
        index.exact_vectors = lambda wanted: (wanted, vectors[wanted])
        for share in (0.5, 0.1, 0.01, 0.001):
            allowed = AllowedIds(np.sort(rng.choice(n, max(k, int(n * share)), replace=False)))
            _, selector_only = index.search(queries, k, allowed.selector)
            start = time.perf_counter()
            _, found = filtered_search(index, queries, k, allowed, lookup)
            filtered_ms = 1000 * (time.perf_counter() - start) / n_queries
            start = time.perf_counter()
            _, over = index.search(queries, min(n, int(2 * k / share)))
            over_ms = 1000 * (time.perf_counter() - start) / n_queries
            kept = np.isin(over, allowed.ids)
            exact = allowed.ids[np.argsort(-(queries @ vectors[allowed.ids].T), axis=1)[:, :k]]
            recall = np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)])
            out.append({
                "type": kind, "allowed": share,
                "selector_returns_k": round(float(np.mean((selector_only >= 0).sum(1) >= k)), 3),
                "final_returns_k": round(float(np.mean((found >= 0).sum(1) >= k)), 3),
                "final_recall@10": round(float(recall), 3), "ms_per_query": round(filtered_ms, 3),
                "overfetch_returns_k": round(float(np.mean(kept.sum(1) >= k)), 3), "overfetch_ms_per_query": round(over_ms, 3),
            })
    return out


def second_positive(searcher: Searcher) -> dict:
    rows = [row for row in searcher.image_rows() if row.label]
    by_label: dict[str, list[int]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row.id)
    label_of = {row.id: row.label for row in rows}
    rng = np.random.default_rng(2)
    one, two = [], []
    for row in rows:
        other = int(rng.choice([i for i in by_label[row.label] if i != row.id]))
        single = searcher.query_examples([Example(row.id)], k=10, exclude_examples=True).results
        pair = searcher.query_examples([Example(row.id), Example(other)], k=10, exclude_examples=True).results
        one.append(np.mean([label_of[m.id] == row.label for m in single]))
        two.append(np.mean([label_of[m.id] == row.label for m in pair]))
    return {"queries": len(rows), "P@10 one positive": round(float(np.mean(one)), 4), "P@10 two positives": round(float(np.mean(two)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files = corel_files()
    with tempfile.TemporaryDirectory() as index_dir:
        index_folder(files[0].parent, "corel", index_dir, labels=COREL_LABELS)
        with Searcher.open("corel", index_dir) as searcher:
            report = {"latency": latency(searcher, files, args.repeats), "second_positive": second_positive(searcher)}
    report["approximate"] = approximate(args.synthetic)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("latency, colour index on Corel-1k (flat), median ms and ratio to the plain search of the same kind")
    for name, entry in report["latency"].items():
        print(f"  {name:<30} {entry['ms']:8.3f} ms  {entry['ratio']:.2f}x")
    sp = report["second_positive"]
    print(f"P@10 over {sp['queries']} queries: one positive {sp['P@10 one positive']:.4f}, two of the same class {sp['P@10 two positives']:.4f}")
    print(f"filters on approximate types, {args.synthetic} synthetic vectors, k=10")
    print("  type   allowed  selector->k  final->k  recall@10  ms/q    over-fetch->k  ms/q")
    for e in report["approximate"]:
        print(f"  {e['type']:<6} {e['allowed']:>7}  {e['selector_returns_k']:>11}  {e['final_returns_k']:>8}  {e['final_recall@10']:>9}  "
              f"{e['ms_per_query']:6.3f}  {e['overfetch_returns_k']:>13}  {e['overfetch_ms_per_query']:6.3f}")


if __name__ == "__main__":
    main()
