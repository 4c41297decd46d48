"""DBA's neighbour search at scale: exact against approximate, recall@K, and where each goes at 100,000 and 1,000,000.

The vectors: colour histograms (the extractor's own 1440-d, as a colour index
stores them) of random crops, scales and flips of the Corel photos, the
"real crops" of ``benchmarks/scale.py`` (generated once, cached outside the
repository). For each size in ``--sizes``:

* exact: :func:`cbir.ann.rerank.nearest_neighbours` (every pair, in tiles),
  timed up to ``--exact-up-to``;
* approximate: :func:`cbir.ann.approximate.approximate_top_k` with the rule
  :func:`cbir.ann.approximate.approximate_rule` gives for that size (IVF over
  a PCA projection, candidates re-scored exactly), forced on below the
  threshold too; recall@K of its neighbours against exact where exact ran;
* an update: 1% new vectors searched against the collection (and the
  collection against them) as the incremental path does, exact and approximate;
* wall and CPU seconds (the machine is shared: CPU seconds scatter less).

Extrapolated: exact as n squared from the largest exact size; approximate
as the power of n fitted on the two largest approximate sizes; each next to
``--index-rate`` images/s (a colour ``cbir index --no-dba``; 1,600 on this
machine, issue 22) for the time the files take to index.

    python benchmarks/dba_scale.py [--sizes 16000,32000,64000,128000,256000] [--exact-up-to 64000] [--k 2] [--json]

Run it alone: ``flock /tmp/cbir-bench.lock python benchmarks/dba_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import real_descriptors  # noqa: E402

from cbir.ann import approximate  # noqa: E402
from cbir.ann.rerank import nearest_neighbours, top_k  # noqa: E402


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def update_seconds(vectors: np.ndarray, k: int, exact: bool) -> float:
    """The incremental search for 1% new vectors: the new against all, the old against the new."""
    n = len(vectors)
    added = np.arange(n - n // 100, n)
    old = vectors[: n - n // 100]

    def run():
        if exact:
            top_k(vectors[added], vectors, k, own_rows=added)
            top_k(old, vectors[added], k)
        else:
            rule = approximate.approximate_rule
            approximate.approximate_top_k(vectors[added], vectors, k, own_rows=added, rule=rule(n, k))
            approximate.approximate_top_k(old, vectors[added], k, rule=rule(len(added), k))

    return timed(run)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16000,32000,64000,128000,256000")
    parser.add_argument("--exact-up-to", type=int, default=64_000)
    parser.add_argument("--k", type=int, default=2, help="neighbours per vector (DBA's default: 2)")
    parser.add_argument("--index-rate", type=float, default=1600.0, help="images/s of a colour `cbir index --no-dba`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    haystack, _ = real_descriptors(max(sizes), 0, None)
    haystack /= np.linalg.norm(haystack, axis=1, keepdims=True)
    k = args.k
    results: dict = {"k": k, "dim": haystack.shape[1], "threshold": approximate.APPROXIMATE_FROM,
                     "projected_dim": approximate.PROJECTED_DIM, "sizes": {}}
    for n in sizes:
        vectors = np.ascontiguousarray(haystack[:n])
        rule = approximate.approximate_rule(n, k)
        entry = {"nlist": rule.nlist, "nprobe": rule.nprobe, "candidates": rule.candidates,
                 "approximate_by_default": approximate.search_rule(n, n, k).approximate}
        (rows, _), entry["approximate_s"], entry["approximate_cpu_s"] = timed(
            lambda: approximate.approximate_top_k(vectors, vectors, k, own_rows=np.arange(n), rule=rule)
        )
        entry["update_1pct_approximate_s"] = update_seconds(vectors, k, exact=False)
        if n <= args.exact_up_to:
            (truth, _), entry["exact_s"], entry["exact_cpu_s"] = timed(lambda: nearest_neighbours(vectors, k))
            entry[f"recall@{k}"] = round(recall(rows, truth), 4)
            entry["exact_over_approximate"] = round(entry["exact_s"] / entry["approximate_s"], 2)
            entry["update_1pct_exact_s"] = update_seconds(vectors, k, exact=True)
        results["sizes"][n] = entry
        print(f"{n}: {entry}", file=sys.stderr, flush=True)
    exact_sizes = [n for n in sizes if "exact_s" in results["sizes"][n]]
    a, b = sizes[-2:]
    power = math.log(results["sizes"][b]["approximate_s"] / results["sizes"][a]["approximate_s"]) / math.log(b / a)
    results["approximate_power"] = round(power, 2)
    for n in (100_000, 1_000_000):
        guess = {"approximate_s": round(results["sizes"][b]["approximate_s"] * (n / b) ** power),
                 "indexing_s": round(n / args.index_rate)}
        if exact_sizes:
            e = exact_sizes[-1]
            guess["exact_s"] = round(results["sizes"][e]["exact_s"] * (n / e) ** 2)
        guess["approximate_over_indexing"] = round(guess["approximate_s"] / guess["indexing_s"], 3)
        results[f"extrapolated_{n}"] = guess
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"DBA-{k} neighbours of {results['dim']}-d colour vectors of real crops; approximate from "
          f"{results['threshold']:,} vectors by default (IVF over a {results['projected_dim']}-d PCA projection)")
    print(f"{'n':>9} {'nlist':>6} {'nprobe':>6} {'exact s':>8} {'approx s':>9} {'ratio':>6} {'recall@' + str(k):>9}"
          f" {'update exact':>12} {'update approx':>13}")
    for n, e in results["sizes"].items():
        print(f"{n:>9,} {e['nlist']:>6} {e['nprobe']:>6} {e.get('exact_s', '-'):>8} {e['approximate_s']:>9}"
              f" {e.get('exact_over_approximate', '-'):>6} {e.get(f'recall@{k}', '-'):>9}"
              f" {e.get('update_1pct_exact_s', '-'):>12} {e['update_1pct_approximate_s']:>13}")
    for n in (100_000, 1_000_000):
        g = results[f"extrapolated_{n}"]
        print(f"at {n:,} (approximate ~ n^{power:.2f}): approximate ~{g['approximate_s']:,} s, exact ~{g.get('exact_s', '?'):,} s,"
              f" indexing the files ~{g['indexing_s']:,} s: {g['approximate_over_indexing']:.3f}x (target <= 0.25)")


if __name__ == "__main__":
    main()
