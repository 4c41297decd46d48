"""One-off query on an autoencoder index: wall time and memory of a new process, and no TensorFlow.

Trains a default-sized autoencoder for a few epochs on the first ``--images``
Corel-1k photos (quality is not the point here), indexes them through the
normal path, then runs ``python -m cbir query IMAGE --json`` in a fresh process
``--runs`` times, as a user does. Reports the median wall time and peak RSS of
those processes and whether any of them imported TensorFlow (it must not: the
index holds the encoder converted for LiteRT). A colour query on the same
images is timed alongside as the reference of what a minimal query costs.

    python benchmarks/autoencoder_query.py [--json] [--images 100] [--epochs 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import REPO, corel_files  # noqa: E402

from cbir.indexing.train import train_autoencoder  # noqa: E402
from cbir.features.base import make_extractor  # noqa: E402
from cbir.features.pipeline import Embedder  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402

_PROBE = """
import runpy, sys
sys.argv = ["cbir", *sys.argv[1:]]
try:
    runpy.run_module("cbir", run_name="__main__")
finally:
    loaded = any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    rss = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write(f"TENSORFLOW_LOADED={loaded} RSS_KB={rss}\\n")
"""


def time_queries(query: Path, name: str, index_dir: Path, runs: int) -> dict:
    seconds, peaks, tensorflow = [], [], False
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, "query", str(query), "--name", name, "--index-dir", str(index_dir), "-k", "5", "--json"],
            capture_output=True, text=True, env=env,
        )
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        tensorflow |= "TENSORFLOW_LOADED=True" in done.stderr
        peaks.append(int(done.stderr.rsplit("RSS_KB=", 1)[1].split()[0]) / 1024)
    return {"median_seconds": round(statistics.median(seconds), 3), "max_seconds": round(max(seconds), 3),
            "peak_rss_mb": round(max(peaks), 1), "imported_tensorflow": tensorflow}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    files = corel_files()[: args.images]
    with tempfile.TemporaryDirectory(prefix="cbir-ae-query-") as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        for file in files:
            (photos / file.name).symlink_to(file)
        started = time.perf_counter()
        trained = train_autoencoder(photos, tmp / "ae", epochs=args.epochs)
        train_seconds = time.perf_counter() - started
        index_dir = tmp / "indexes"
        index_folder(photos, "ae", index_dir, embedder=Embedder(trained))
        index_folder(photos, "colour", index_dir, embedder=Embedder(make_extractor("color")))
        query = photos / files[len(files) // 2].name
        report = {
            "images": len(files),
            "train_seconds": round(train_seconds, 1),
            "autoencoder_query": time_queries(query, "ae", index_dir, args.runs),
            "colour_query": time_queries(query, "colour", index_dir, args.runs),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['images']} Corel images, autoencoder trained {args.epochs} epochs in {report['train_seconds']} s")
    for key in ("autoencoder_query", "colour_query"):
        r = report[key]
        print(f"{key:18} new process: median {r['median_seconds']:.2f} s (max {r['max_seconds']:.2f} s), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, TensorFlow imported: {r['imported_tensorflow']}")


if __name__ == "__main__":
    main()
