"""Diffusion re-ranking (Iscen et al. 2017) against the default DBA-2 + αQE-2, category and instance level.

Collections as benchmarks/rerank.py: ``corel`` (Corel-1k, 10 classes of 100)
and ``instance`` (4 augmented copies of each Corel photo, one group each).
Each is embedded once with MobileNet (shared ImageNet weights, flat index,
no DBA; cached under ``$CBIR_BENCH_CACHE``); every method then works on the
stored vectors in numpy, leave-one-out (the query's own row is left out of
its seeds, its expansion and its ranking), AP over the full ranking:

* ``plain``: cosine similarity;
* ``dba2+qe2``: the default re-ranking (DBA-2, αQE-2, alpha 3) exactly as
  ``cbir.ann.rerank`` computes it (checked against docs/rerank.md's 0.906);
* ``diffusion k=K q=Q``: :mod:`cbir.ann.diffusion` on the kNN graph (K
  mutual neighbours, gamma 3, alpha 0.99, 20 conjugate-gradient
  iterations), seeded by the query's top Q similarities; ``on dba`` runs it
  on the DBA-2 vectors, seeded by the default pipeline's expanded query.

``query ms``: the median time of one query's diffusion (the seeds given),
for scale. On the instance set every fourth image is a query (1000).

    python benchmarks/diffusion.py [--json] [--sets corel,instance] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import CACHE  # noqa: E402
from rerank import EXTRACTORS, collection  # noqa: E402

from cbir.ann.diffusion import diffuse, knn_graph, query_seeds  # noqa: E402
from cbir.ann.rerank import augment_database, expand_queries, nearest_neighbours  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.retrieval.search import Searcher  # noqa: E402

GRID = [(10, 5), (20, 5), (20, 10), (50, 10)]
QUICK_GRID = [(20, 5)]


def stored(set_name: str, index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, group of each)`` of the collection embedded with MobileNet (embedded once, cached)."""
    folder, labels = collection(set_name)
    name = f"{set_name}-mobilenet"
    index_folder(folder, name, index_dir, options=EXTRACTORS["mobilenet"], labels=labels, dba=None)
    with Searcher.open(name, index_dir, expand=None) as searcher:
        rows = searcher.image_rows()
        vectors = searcher.original_vectors([r.id for r in rows])
    groups = [r.label if labels else Path(r.path).parent.name for r in rows]
    return vectors, np.unique(groups, return_inverse=True)[1]


def scores_report(scores: np.ndarray, queries: np.ndarray, groups: np.ndarray) -> dict:
    """mAP, P@10 and N-S (top 4 with the query counted as found) of leave-one-out rankings (``scores`` per query row)."""
    aps, p10, ns = [], [], []
    for row, q in zip(scores, queries):
        row = row.copy()
        row[q] = -np.inf
        order = np.argsort(-row, kind="stable")[:-1]
        relevant = groups[order] == groups[q]
        hits = np.flatnonzero(relevant)
        total = len(hits)
        aps.append(float(np.mean((np.arange(total) + 1) / (hits + 1))) if total else 0.0)
        p10.append(float(relevant[:10].mean()))
        ns.append(1 + float(relevant[:3].sum()))
    return {"map": round(float(np.mean(aps)), 4), "precision@10": round(float(np.mean(p10)), 4), "ns": round(float(np.mean(ns)), 3)}


def top_excluding(scores: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.copy()
    scores[np.arange(len(queries)), queries] = -np.inf
    ids = np.argsort(-scores, axis=1)[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def default_pipeline(vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores, DBA-2 vectors, expanded queries)`` of the default DBA-2 + αQE-2 (alpha 3)."""
    augmented = augment_database(vectors, 2, 3.0)
    first = vectors[queries] @ augmented.T
    ids, top = top_excluding(first, queries, 2)
    expanded = expand_queries(vectors[queries], augmented[ids], top, 3.0)
    return expanded @ augmented.T, augmented, expanded


def diffusion_scores(base: np.ndarray, query_vectors: np.ndarray, queries: np.ndarray, k: int, query_k: int) -> tuple[np.ndarray, float]:
    rows, scores = nearest_neighbours(base, k)
    graph = knn_graph(rows, scores)
    ids, top = top_excluding(query_vectors @ base.T, queries, query_k)
    out = np.zeros((len(queries), len(base)), np.float64)
    for start in range(0, len(queries), 250):
        part = slice(start, start + 250)
        out[part] = diffuse(graph, query_seeds(ids[part], top[part], len(base))).T
    times = []
    for i in range(min(30, len(queries))):
        begin = time.perf_counter()
        diffuse(graph, query_seeds(ids[i : i + 1], top[i : i + 1], len(base)))
        times.append(time.perf_counter() - begin)
    return out, statistics.median(times) * 1000


def bench(set_name: str, grid, index_dir: Path) -> list[dict]:
    vectors, groups = stored(set_name, index_dir)
    queries = np.arange(len(vectors)) if set_name == "corel" else np.arange(0, len(vectors), 4)
    rows = [{"method": "plain", **scores_report(vectors[queries] @ vectors.T, queries, groups)}]
    default, augmented, expanded = default_pipeline(vectors, queries)
    rows.append({"method": "dba2+qe2 (default)", **scores_report(default, queries, groups)})
    for k, query_k in grid:
        for label, base, query_vectors in (("", vectors, vectors[queries]), (" on dba2+qe2", augmented, expanded)):
            begin = time.perf_counter()
            scores, query_ms = diffusion_scores(base, query_vectors, queries, k, query_k)
            rows.append(
                {
                    "method": f"diffusion k={k} q={query_k}{label}",
                    **scores_report(scores, queries, groups),
                    "query ms": round(query_ms, 2),
                    "seconds": round(time.perf_counter() - begin, 1),
                }
            )
            print(set_name, rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sets", default="corel,instance")
    parser.add_argument("--quick", action="store_true", help="one diffusion setting")
    args = parser.parse_args()
    index_dir = CACHE / "diffusion-indexes"
    results = {name: bench(name, QUICK_GRID if args.quick else GRID, index_dir) for name in args.sets.split(",")}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, rows in results.items():
        print(f"\n{name} (MobileNet, leave-one-out)")
        print(f"{'method':<34} {'mAP':>7} {'P@10':>7} {'N-S':>6} {'query ms':>9}")
        for row in rows:
            print(f"{row['method']:<34} {row['map']:>7.4f} {row['precision@10']:>7.4f} {row['ns']:>6.3f} {row.get('query ms', ''):>9}")


if __name__ == "__main__":
    main()
