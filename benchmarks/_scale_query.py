"""A query process for benchmarks/scale.py: opens an index as ``cbir query`` does and answers single queries.

    python benchmarks/_scale_query.py INDEX_FOLDER QUERIES.npy TRUTH.npy

Prints one JSON object: its memory (peak RSS, from /proc/self/status), the
time to open, single-query latency (first pass, then the same queries again
once warm), recall@10 of the index's own search against ``TRUTH`` (ids), and
the full answer ``cbir query`` gives for a vector (query expansion at the
defaults, catalogue rows) once warm. Run as a fresh process so that nothing
the building process held counts.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def timed(call, queries) -> tuple[list[float], list]:
    latencies, answers = [], []
    for q in queries:
        started = time.perf_counter()
        answers.append(call(q[None, :]))
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, answers


def main() -> None:
    folder, queries_file, truth_file = sys.argv[1:4]
    from cbir.retrieval.search import Searcher

    queries, truth = np.load(queries_file), np.load(truth_file)
    rss_before = status_kb("VmRSS")
    started = time.perf_counter()
    searcher = Searcher._open_path(Path(folder), {})  # what Searcher.open(name, index_dir) does, given the folder
    open_seconds = time.perf_counter() - started
    rss_open = status_kb("VmRSS")
    search = lambda q: searcher.search_ids(q, 10)[1][0]  # noqa: E731 - the one FAISS call (with re-ranking)
    first, _ = timed(search, queries)
    warm, found = timed(search, queries)
    answer, _ = timed(lambda q: searcher.search_vectors(q, 10), queries)  # as cbir query answers (expansion on)
    recall = float(np.mean([len(set(f[:10].tolist()) & set(t[:10].tolist())) / 10 for f, t in zip(found, truth)]))
    factory, mapped = searcher.vectors.factory, searcher.vectors.mapped
    from cbir.store.snapshot_record import read_state

    snapshot = searcher.store.path / read_state(searcher.store).file
    peak_kb = status_kb("VmHWM")
    # Resident pages of mapped files (the snapshot's lists) are page cache the kernel may drop; anonymous ones are not.
    anon_kb, file_kb = status_kb("RssAnon"), status_kb("RssFile")
    # The plain reference, in this process and minute: the same snapshot read whole into memory.
    reference_ms = again_ms = None
    if mapped:
        from cbir.ann.vectors import VectorIndex

        mapped_index = searcher.vectors
        whole = VectorIndex.read(snapshot, mapped_index.factory, mapped_index.dim)
        whole.set_search_params(dict(searcher.store.manifest.get("search_params") or {}))
        whole.exact_vectors = mapped_index.exact_vectors
        timed(lambda q: whole.search(q, 10), queries)  # its first pass, to be fair to both
        reference, _ = timed(lambda q: whole.search(q, 10), queries)
        again, _ = timed(search, queries)
        reference_ms, again_ms = statistics.median(reference), statistics.median(again)
    searcher.close()
    print(
        json.dumps(
            {
                "factory": factory,
                "mapped": mapped,
                "open_seconds": round(open_seconds, 2),
                "rss_mb_before_open": round(rss_before / 1024, 1),
                "rss_mb_after_open": round(rss_open / 1024, 1),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "rss_mb_anonymous_warm": round(anon_kb / 1024, 1),
                "rss_mb_file_backed_warm": round(file_kb / 1024, 1),
                "snapshot_mb": round(os.path.getsize(snapshot) / 2**20, 1),
                "latency_ms_median_first": round(statistics.median(first), 3),
                "latency_ms_median_warm": round(statistics.median(warm), 3),
                "latency_ms_p99_warm": round(float(np.percentile(warm, 99)), 3),
                "query_answer_ms_median_warm": round(statistics.median(answer), 3),
                "recall@10": round(recall, 4),
                # Same search on the snapshot read whole (before: what every reader did).
                "latency_ms_median_read_whole": None if reference_ms is None else round(reference_ms, 3),
                "latency_ms_median_mapped_after_it": None if again_ms is None else round(again_ms, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
