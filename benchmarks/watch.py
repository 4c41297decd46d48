"""A burst of new files through ``cbir watch`` against ``cbir index`` of the same files.

The files: the first ``--images`` of Corel-1k's 8 flips/rotations, and above 8,000 the same at a
second JPEG quality (up to 16,000 distinct files; see
``parallel.py``), generated into a temporary folder and deleted afterwards.
Two folders start with the same ``--base`` images, each indexed (colour).
Then, in each, the burst is copied in as fast as this process can:

* ``cbir index``: copy, then one ``cbir index`` update run (a new process,
  ``--json``): time from the first copy to the run's end;
* ``cbir watch``: a watcher (a new process, started and past its first
  rescan) sees the copy as it happens and indexes it in batches: time from
  the first copy until its ``--json`` lines report every file indexed.

Throughput ratio = index's time / watch's time, of the medians over
``--repeat`` pairs that alternate which runs first (1.0: as fast; above: the
watcher's overlap with the copy wins time back). Each pair's indexes are
then compared: the same paths and vectors. Run alone (figures are per machine):

    flock /tmp/cbir-bench.lock python benchmarks/watch.py [--json] [--images 2000] [--base 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import REPO  # noqa: E402
from parallel import make_collection  # noqa: E402

from cbir.cpus import usable_cores  # noqa: E402


def _cbir(*args: str) -> list[str]:
    return [sys.executable, "-m", "cbir", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _copy(files: list[Path], source: Path, folder: Path) -> float:
    started = time.perf_counter()
    for file in files:
        target = folder / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return time.perf_counter() - started


def run_index(burst: list[Path], source: Path, folder: Path, index_dir: Path) -> dict:
    started = time.perf_counter()
    copy_s = _copy(burst, source, folder)
    done = subprocess.run(_cbir("index", str(folder), "--name", "ref", "--index-dir", str(index_dir), "--json"),
                          capture_output=True, text=True, env=_env(), check=True)
    total_s = time.perf_counter() - started
    summary = json.loads(done.stdout)
    return {"copy_s": round(copy_s, 2), "index_s": round(summary["seconds"], 2), "total_s": round(total_s, 2),
            "added": summary["added"], "images_per_s": round(len(burst) / total_s, 1)}


def run_watch(burst: list[Path], source: Path, folder: Path, index_dir: Path, expected_total: int) -> dict:
    process = subprocess.Popen(_cbir("watch", str(folder), "--name", "watched", "--index-dir", str(index_dir), "--json"),
                               stdout=subprocess.PIPE, text=True, env=_env())
    try:
        json.loads(process.stdout.readline())  # the rescan at start: the watcher is in place
        started = time.perf_counter()
        copy_s = _copy(burst, source, folder)
        batches, added, run_s, each = 0, 0, 0.0, []
        while True:
            line = process.stdout.readline()
            if not line:
                raise SystemExit("the watcher stopped before indexing the burst")
            run = json.loads(line)
            batches += 1
            added += run["added"]
            run_s += run["seconds"]
            each.append((run["added"], run["seconds"]))
            if run["total"] >= expected_total:
                break
        total_s = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()
    return {"copy_s": round(copy_s, 2), "batches": batches, "runs_s": round(run_s, 2), "runs": each, "total_s": round(total_s, 2),
            "after_copy_s": round(total_s - copy_s, 2), "added": added, "images_per_s": round(len(burst) / total_s, 1)}


def _same_contents(index_dir: Path, ref_folder: Path, watch_folder: Path) -> bool:
    import numpy as np

    from cbir.retrieval.search import Searcher

    def contents(name: str, root: Path) -> dict:
        with Searcher.open(name, index_dir) as searcher:
            rows = {row.id: os.path.relpath(row.path, root) for row in searcher.image_rows()}
            return {rows[int(i)]: v.copy() for ids, block in searcher.iter_original_vectors() for i, v in zip(ids, block)}

    ref, watched = contents("ref", ref_folder), contents("watched", watch_folder)
    return ref.keys() == watched.keys() and all(np.allclose(ref[k], watched[k], atol=1e-6) for k in ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="files in the burst")
    parser.add_argument("--base", type=int, default=200, help="files indexed before the burst")
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs, alternating which goes first (medians reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="cbir-watch-bench-") as tmp:
        tmp = Path(tmp)
        source = tmp / "source"
        files = make_collection(source, args.base + args.images, usable_cores())
        base, burst = files[: args.base], files[args.base :]
        for n in range(args.repeat):
            index_dir = tmp / f"indexes{n}"
            folders = {"ref": tmp / f"ref{n}", "watched": tmp / f"watched{n}"}
            for name, folder in folders.items():
                _copy(base, source, folder)
                subprocess.run(_cbir("index", str(folder), "--name", name, "--index-dir", str(index_dir), "--json"),
                               capture_output=True, env=_env(), check=True)
            runs = {}
            # Alternating which goes first: a shared machine's load drifts.
            for which in (("index", "watch") if n % 2 == 0 else ("watch", "index")):
                if which == "index":
                    runs["index"] = run_index(burst, source, folders["ref"], index_dir)
                else:
                    runs["watch"] = run_watch(burst, source, folders["watched"], index_dir, len(files))
            runs["same_contents"] = _same_contents(index_dir, folders["ref"], folders["watched"])
            pairs.append(runs)
    index_s = round(statistics.median(p["index"]["total_s"] for p in pairs), 2)
    watch_s = round(statistics.median(p["watch"]["total_s"] for p in pairs), 2)
    report = {
        "images": len(burst),
        "base": len(base),
        "cores": usable_cores(),
        "pairs": pairs,
        "cbir_index_median_s": index_s,
        "cbir_watch_median_s": watch_s,
        "throughput_ratio_watch_vs_index": round(index_s / watch_s, 2),
        "same_contents": all(p["same_contents"] for p in pairs),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"burst of {report['images']} Corel copies into a folder of {report['base']} indexed images ({report['cores']} cores)")
    for n, pair in enumerate(pairs):
        index, watch = pair["index"], pair["watch"]
        print(f"  pair {n + 1}: cbir index copy {index['copy_s']} s + index {index['index_s']} s = {index['total_s']} s; "
              f"cbir watch {watch['total_s']} s ({watch['after_copy_s']} s after the copy, {watch['batches']} batch(es))")
    print(f"  medians: cbir index {index_s} s ({len(burst) / index_s:.0f} images/s), cbir watch {watch_s} s "
          f"({len(burst) / watch_s:.0f} images/s)")
    print(f"  throughput watch / index: {report['throughput_ratio_watch_vs_index']}x; same paths and vectors: {report['same_contents']}")


if __name__ == "__main__":
    main()
