"""Re-ranking benchmark: plain, αQE, DBA and both, on category- and instance-level collections.

Collections (built once under ``$CBIR_BENCH_CACHE``, default ``<tmp>/cbir-bench``;
never in the repository, see ``_datasets.py``):

* ``corel``: Corel-1k, 1000 photos, 10 classes of 100 (category level);
* ``instance``: 4 strongly augmented copies of each Corel-1k photo (crop,
  rotation, scale, colour jitter, JPEG quality 30-90), one group per photo,
  4000 images (instance level, UKBench style: N-S score reported);
* ``fashion``: Fashion-MNIST test images, 300 per class, 3000 images
  (category level, greyscale 28 x 28).

For each collection and extractor (``color``; ``mobilenet`` with the shared
ImageNet weights) the collection is embedded once (a flat index, no DBA);
every grid setting then only changes the DBA snapshot (``index_folder(dba=...)``,
no re-embedding: its time is reported as ``dba s``) and the query expansion
of :func:`cbir.evaluation.protocols.evaluate_index`. Protocol: leave-one-out over the
stored index, searched as queries are (expansion leaves the query itself out
of its own neighbours); AP over the full ranking.

Latency: the median time of one ``Searcher.search_vectors`` call (one query
vector, k = 10: the search, the expansion's first search and lookups, the
catalogue rows) over 200 stored vectors, and its ratio to a search without
expansion of the same index, the two alternating query by query (DBA does
not change the cost of a search: the index holds as many vectors); ``query ms`` is a whole ``Searcher.query``
(decode, embed, search) with the default setting, for scale.

    python benchmarks/rerank.py [--json] [--sets corel,instance,fashion] [--extractors color,mobilenet] [--quick]
    python benchmarks/rerank.py --latency-only      # search latency only, default vs plain, 500 queries
    python benchmarks/rerank.py --approximate-from 2  # DBA's neighbours by the approximate search (docs/rerank.md)
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
from _corel import COREL_LABELS, MOBILENET_WEIGHTS, corel_files  # noqa: E402
from _datasets import CACHE, fashion_mnist_set, instance_set  # noqa: E402

from cbir.evaluation.protocols import evaluate_index  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.ann.rerank import DEFAULT_ALPHA, DEFAULT_DBA, DEFAULT_EXPAND  # noqa: E402
from cbir.retrieval.search import Searcher  # noqa: E402

#: (DBA k, αQE n, alpha); 0 = off.
GRID = [
    (0, 0, 3.0),
    (0, 1, 3.0), (0, 2, 3.0), (0, 3, 3.0), (0, 5, 3.0),
    (1, 0, 3.0), (2, 0, 3.0), (3, 0, 3.0), (5, 0, 3.0),
    (1, 1, 3.0), (2, 2, 3.0), (3, 3, 3.0), (5, 5, 3.0), (10, 10, 3.0),
    (2, 2, 1.0), (2, 2, 0.0),
]
QUICK_GRID = [(0, 0, 3.0), (0, 2, 3.0), (2, 0, 3.0), (2, 2, 3.0), (10, 10, 3.0)]
EXTRACTORS = {
    "color": {"extractor": "color"},
    "mobilenet": {"backbone": "mobilenet", "weights": str(MOBILENET_WEIGHTS)},
}


def collection(name: str) -> tuple[Path, str | None]:
    if name == "corel":
        corel_files()
        return COREL_LABELS.parent / "images", str(COREL_LABELS)
    if name == "instance":
        return instance_set(), None
    if name == "fashion":
        return fashion_mnist_set(300), None
    raise SystemExit(f"unknown set {name!r}")


def search_latency(searcher: Searcher, plain: Searcher, vectors: np.ndarray) -> tuple[float, float]:
    """Median seconds of one single-vector search with ``searcher`` and with ``plain`` (no expansion).

    Calls alternate query by query, so a load spike on a shared machine hits both alike.
    """
    searcher.search_vectors(vectors[:1], 10)
    plain.search_vectors(vectors[:1], 10)
    times, plain_times = [], []
    for i in range(len(vectors)):
        for who, bucket in ((searcher, times), (plain, plain_times)):
            begin = time.perf_counter()
            who.search_vectors(vectors[i : i + 1], 10)
            bucket.append(time.perf_counter() - begin)
    return statistics.median(times), statistics.median(plain_times)


def bench(set_name: str, extractor: str, grid, index_dir: Path) -> dict:
    folder, labels = collection(set_name)
    name = f"{set_name}-{extractor}"
    started = time.perf_counter()
    summary = index_folder(folder, name, index_dir, options=EXTRACTORS[extractor], labels=labels, dba=None)
    embed_seconds = time.perf_counter() - started
    rows = []
    for dba, expand, alpha in grid:
        begin = time.perf_counter()
        index_folder(folder, name, index_dir, labels=labels, dba=dba or None, dba_alpha=alpha)
        dba_seconds = time.perf_counter() - begin
        report = evaluate_index(name, index_dir, expand=expand or None, alpha=alpha)
        with Searcher.open(name, index_dir, expand=expand or None, alpha=alpha) as searcher, Searcher.open(
            name, index_dir, expand=None
        ) as plain:
            ids = np.array([row.id for row in searcher.image_rows()])
            sample = ids[:: max(1, len(ids) // 200)][:200]
            vectors = searcher.original_vectors(sample.tolist())
            latency, plain_latency = search_latency(searcher, plain, vectors)
        rows.append(
            {
                "dba": dba,
                "expand": expand,
                "alpha": alpha,
                "precision@10": round(report.precision[10], 4),
                "map": round(report.map, 4),
                "ns_score": None if report.ns_score is None else round(report.ns_score, 3),
                "search_ms": round(1000 * latency, 3),
                "search_ratio": round(latency / plain_latency, 2),
                "dba_seconds": round(dba_seconds, 2) if dba else 0.0,
            }
        )
        print(f"  {name} {rows[-1]}", file=sys.stderr, flush=True)
    # A whole query with the default setting, for scale.
    index_folder(folder, name, index_dir, labels=labels, dba=DEFAULT_DBA, dba_alpha=DEFAULT_ALPHA)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".png"))[::50][:20]
    with Searcher.open(name, index_dir, expand=DEFAULT_EXPAND, alpha=DEFAULT_ALPHA) as searcher:
        searcher.query(files[0], k=10)
        times = []
        for path in files:
            begin = time.perf_counter()
            searcher.query(path, k=10)
            times.append(time.perf_counter() - begin)
    return {
        "set": set_name,
        "extractor": extractor,
        "images": summary.total,
        "embed_seconds": round(embed_seconds, 1),
        "query_ms_default": round(1000 * statistics.median(times), 2),
        "rows": rows,
    }


def latency_only(set_name: str, extractor: str, index_dir: Path, n_queries: int = 500) -> dict:
    """Search latency with the default re-ranking against plain search on the benchmark's index, nothing else."""
    folder, labels = collection(set_name)
    name = f"{set_name}-{extractor}"
    index_folder(folder, name, index_dir, options=EXTRACTORS[extractor], labels=labels, dba=DEFAULT_DBA)
    with Searcher.open(name, index_dir, expand=DEFAULT_EXPAND) as searcher, Searcher.open(name, index_dir, expand=None) as plain:
        ids = np.array([row.id for row in searcher.image_rows()])
        sample = ids[:: max(1, len(ids) // n_queries)][:n_queries]
        vectors = searcher.original_vectors(sample.tolist())
        latency, plain_latency = search_latency(searcher, plain, vectors)
    return {
        "set": set_name,
        "extractor": extractor,
        "plain_search_ms": round(1000 * plain_latency, 3),
        "default_search_ms": round(1000 * latency, 3),
        "ratio": round(latency / plain_latency, 2),
    }


def print_table(result: dict) -> None:
    print(
        f"\n{result['set']} / {result['extractor']}: {result['images']} images; "
        f"a whole query (decode, embed, search, default re-ranking): {result['query_ms_default']} ms"
    )
    print("  DBA  αQE  alpha    P@10     mAP    N-S   search ms  x plain   dba s")
    for row in result["rows"]:
        ns = f"{row['ns_score']:6.3f}" if row["ns_score"] is not None else "     -"
        print(
            f"  {row['dba'] or '-':>3}  {row['expand'] or '-':>3}  {row['alpha']:5.1f}  {row['precision@10']:6.4f}  "
            f"{row['map']:6.4f}  {ns}  {row['search_ms']:10.3f}  {row['search_ratio']:7.2f}  {row['dba_seconds']:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--sets", default="corel,instance,fashion")
    parser.add_argument("--extractors", default="color,mobilenet")
    parser.add_argument("--quick", action="store_true", help="a 5-setting grid")
    parser.add_argument("--latency-only", action="store_true", help="only search latency, default re-ranking vs plain")
    parser.add_argument(
        "--approximate-from", type=int, default=None,
        help="DBA's neighbour search approximate from this many vectors (cbir.ann.approximate.APPROXIMATE_FROM; "
        "e.g. 2 to measure the approximate path on these small sets)",
    )
    args = parser.parse_args()
    if args.approximate_from is not None:
        from cbir.ann import approximate

        approximate.APPROXIMATE_FROM = args.approximate_from
    index_dir = CACHE / "rerank-indexes"
    if args.latency_only:
        found = [latency_only(s, e, index_dir) for s in args.sets.split(",") for e in args.extractors.split(",")]
        print(json.dumps(found, indent=2) if args.json else "\n".join(str(row) for row in found))
        return
    results = []
    for set_name in args.sets.split(","):
        for extractor in args.extractors.split(","):
            results.append(bench(set_name, extractor, QUICK_GRID if args.quick else GRID, index_dir))
            if not args.json:
                print_table(results[-1])
    if args.json:
        print(json.dumps({"default": {"dba": DEFAULT_DBA, "expand": DEFAULT_EXPAND, "alpha": DEFAULT_ALPHA}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
