"""Pretrained CNN features on Corel-1k: retrieval quality, runtimes, throughput, latency.

Quality (MobileNet with the shared ImageNet weights, leave-one-out): P@10,
P@20 and mAP of the stored index, and of PCA to 32/64/128/256 dimensions with
and without whitening (fitted on the collection, as ``--pca`` does); the best
PCA setting is also built as a real index and evaluated. With ``--sweep``,
every resize mode x pooling, which is how the defaults were chosen.

Speed, per backbone (MobileNet with its real weights; VGG16 and ResNet50 with
``weights="none"``, on an evenly spread subset of the images), all in one
process and interleaved over ``--rounds`` rounds (best of each counts):

* model only: ``transform_prepared`` on batches of 32 already decoded and
  resized images (preprocess, network, pooling, normalisation), for each
  engine of the converted model (LiteRT, OpenVINO) and for Keras
  ``model.predict``, alternating batch by batch; the default runtime
  (``auto``) is whichever engine it picks for the backbone, and the lowest
  cosine between its vectors and Keras' is reported;
* end to end: ``index_folder`` with the default runtime, from files to a
  stored index (decoding threads, batches, network, catalogue, FAISS), with
  the network already built;
* loading: building the network and converting it to TFLite at index time,
  and opening an index for queries (the cached ``.tflite`` is loaded).

Query latency: median and p95 of ``Searcher.query`` (decode, embed, search)
against an open MobileNet index; and a one-off ``cbir query`` in a new
process (Python start, imports, loading the cached model, the query), next to
``import tensorflow`` alone in a new process, which that path avoids.

    python benchmarks/cnn_corel.py [--json] [--sweep] [--rounds 2]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL_LABELS, MOBILENET_WEIGHTS, corel_files  # noqa: E402

from cbir.evaluation.protocols import evaluate_index, evaluate_vectors  # noqa: E402
from cbir.features.cnn import CNNExtractor, POOLINGS, RESIZE_MODES  # noqa: E402
from cbir.features.pca import PCAReduction  # noqa: E402
from cbir.features.pipeline import Embedder  # noqa: E402
from cbir.features.runtimes import openvino_available  # noqa: E402
from cbir.images.decode import read_image  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402
from cbir.retrieval.search import Searcher  # noqa: E402

BATCH = 32
PCA_DIMS = (32, 64, 128, 256)
#: Backbone -> weights and images timed (the big networks run 4-20 images/s).
SPEED_RUNS = {
    "mobilenet": (str(MOBILENET_WEIGHTS), 1000),
    "resnet50": ("none", 160),
    "vgg16": ("none", 96),
    "mobilenetv2": ("none", 320),
    "efficientnetb0": ("none", 160),
}
DEFAULT_SPEED = ("mobilenet", "resnet50", "vgg16")


def corel_labels(files: list[Path]) -> list[int]:
    return [int(path.stem) // 100 for path in files]


def decode(files: list[Path], size: int) -> list[np.ndarray]:
    return [read_image(path, min_side=size) for path in files]


def quality(vectors: np.ndarray, labels: list[int]) -> dict[str, float]:
    report = evaluate_vectors(vectors, labels, ks=(10, 20))
    return {"p@10": report.precision[10], "p@20": report.precision[20], "map": report.map}


def report_quality(report) -> dict[str, float]:
    return {"p@10": report.precision[10], "p@20": report.precision[20], "map": report.map}


def model_only(runtimes: dict[str, CNNExtractor], prepared: list[np.ndarray], default: str) -> tuple[dict[str, float], float]:
    """Images/s of ``transform_prepared`` for each runtime, and the lowest
    cosine between the default runtime's vectors and Keras'.

    The runtimes alternate batch by batch, so a burst of load elsewhere on
    the machine hits all alike.
    """
    seconds = dict.fromkeys(runtimes, 0.0)
    lowest = 1.0
    for extractor in runtimes.values():
        extractor.transform_prepared(prepared[:BATCH])  # warm-up at the timed batch size
    for start in range(0, len(prepared), BATCH):
        batch = prepared[start : start + BATCH]
        vectors = {}
        for key, extractor in runtimes.items():
            started = time.perf_counter()
            vectors[key] = extractor.transform_prepared(batch)
            seconds[key] += time.perf_counter() - started
        lowest = min(lowest, float((vectors[default] * vectors["keras"]).sum(axis=1).min()))
    return {key: len(prepared) / value for key, value in seconds.items()}, lowest


def end_to_end(extractor: CNNExtractor, folder: Path, index_dir: Path, name: str) -> float:
    """Images/s of ``index_folder`` from files to a stored index."""
    started = time.perf_counter()
    summary = index_folder(folder, name, index_dir, embedder=Embedder(extractor), batch_size=BATCH)
    return summary.embedded / (time.perf_counter() - started)


def subset_folder(files: list[Path], count: int, root: Path) -> tuple[Path, list[Path]]:
    """A folder of symbolic links to ``count`` images spread over all classes."""
    chosen = files[:: max(1, len(files) // count)][:count]
    folder = root / f"corel-{count}"
    folder.mkdir()
    for path in chosen:
        (folder / path.name).symlink_to(path)
    return folder, chosen


def speed(backbone: str, files: list[Path], work: Path, rounds: int) -> dict:
    weights, count = SPEED_RUNS[backbone]
    folder, chosen = subset_folder(files, count, work) if count < len(files) else (files[0].parent, files)
    started = time.perf_counter()
    fast = CNNExtractor(backbone=backbone, weights=weights, batch_size=BATCH).build()
    build_seconds = time.perf_counter() - started
    default = fast.engine
    runtimes = {default: fast}
    for runtime in ("tflite", "openvino", "keras"):
        if runtime not in runtimes and (runtime != "openvino" or openvino_available()):
            runtimes[runtime] = CNNExtractor(backbone=backbone, weights=weights, runtime=runtime, batch_size=BATCH).build()
    prepared = [fast.prepare(image) for image in decode(chosen, fast.input_size)]

    figures = {"weights": "imagenet (shared)" if weights != "none" else "none", "images": len(chosen), "default_runtime": default}
    best = dict.fromkeys([*runtimes, "end_to_end"], 0.0)
    lowest_cosine = 1.0
    for round_number in range(rounds):
        rates, cosine = model_only(runtimes, prepared, default)
        best.update({key: max(best[key], rate) for key, rate in rates.items()})
        lowest_cosine = min(lowest_cosine, cosine)
        best["end_to_end"] = max(best["end_to_end"], end_to_end(fast, folder, work, f"{backbone}{round_number}"))
    started = time.perf_counter()
    with Searcher.open(f"{backbone}0", work) as searcher:
        searcher.embedder  # loads the cached .tflite
        open_seconds = time.perf_counter() - started
    figures.update(
        {
            "model_only": {key: best[key] for key in runtimes},
            "default_vs_keras": best[default] / best["keras"],
            "end_to_end": best["end_to_end"],
            "end_to_end_vs_model_only": best["end_to_end"] / best[default],
            "min_cosine_default_keras": lowest_cosine,
            "build_and_convert_s": build_seconds,
            "open_index_s": open_seconds,
        }
    )
    return figures


def latency(name: str, index_dir: Path, files: list[Path], queries: int) -> dict:
    with Searcher.open(name, index_dir) as searcher:
        searcher.query(files[0], k=10)  # loads the model and warms the interpreter
        times = []
        for path in files[:: max(1, len(files) // queries)][:queries]:
            started = time.perf_counter()
            searcher.query(path, k=10)
            times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "queries": len(times)}


def one_off_query(name: str, index_dir: Path, query: Path, runs: int = 3) -> dict:
    """Median wall time of ``cbir query`` in a new process, and of ``import tensorflow`` alone."""
    commands = {
        "cli_query_s": [sys.executable, "-m", "cbir", "query", str(query), "--name", name, "--index-dir", str(index_dir), "--json"],
        "import_tensorflow_s": [sys.executable, "-c", "import tensorflow"],
    }
    times: dict[str, list[float]] = {key: [] for key in commands}
    for _ in range(runs):
        for key, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def sweep(files: list[Path], labels: list[int]) -> dict:
    """Every resize mode x pooling with the shared MobileNet weights."""
    extractor = CNNExtractor(weights=str(MOBILENET_WEIGHTS)).build()
    images = decode(files, extractor.input_size)
    results = {}
    for resize in RESIZE_MODES:
        extractor.resize = resize
        prepared = [extractor.prepare(image) for image in images]
        for pooling in POOLINGS:
            # Pooling follows the network, so the loaded network serves all three.
            extractor.pooling = pooling
            results[f"{resize}/{pooling}"] = quality(extractor.transform_prepared(prepared), labels)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--sweep", action="store_true", help="also compare every resize mode and pooling")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds; the best of each counts")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed for latency")
    parser.add_argument("--backbones", default=",".join(DEFAULT_SPEED), help=f"backbones timed, comma-separated, among {', '.join(SPEED_RUNS)}; mobilenet is needed")
    args = parser.parse_args()

    files = corel_files()
    labels = corel_labels(files)
    for path in files:  # same page-cache state for every contender
        path.read_bytes()
    # Timings mean little on a busy machine: record how busy it was.
    figures: dict = {"load_average_before": os.getloadavg()[0], "speed": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for backbone in args.backbones.split(","):
            figures["speed"][backbone] = speed(backbone, files, work, args.rounds)

        # The MobileNet index built above holds the vectors of record.
        figures["quality"] = {"none": report_quality(evaluate_index("mobilenet0", work, labels=COREL_LABELS, ks=(10, 20)))}
        with Searcher.open("mobilenet0", work) as searcher:
            rows = searcher.image_rows()
            vectors = searcher.original_vectors([row.id for row in rows])
        row_labels = [int(Path(row.path).stem) // 100 for row in rows]
        for dims in PCA_DIMS:
            for whiten in (False, True):
                pca = PCAReduction(dims, whiten=whiten).fit(vectors)
                figures["quality"][f"pca{dims}{'w' if whiten else ''}"] = quality(pca.transform(vectors), row_labels)
        best = max((key for key in figures["quality"] if key != "none"), key=lambda key: figures["quality"][key]["map"])
        dims, whiten = int(best[3:].rstrip("w")), best.endswith("w")
        embedder = Embedder(CNNExtractor(weights=str(MOBILENET_WEIGHTS)), PCAReduction(dims, whiten=whiten))
        index_folder(files[0].parent, "mobilenet-pca", work, embedder=embedder, batch_size=BATCH)
        figures["quality"][f"{best} (index)"] = report_quality(
            evaluate_index("mobilenet-pca", work, labels=COREL_LABELS, ks=(10, 20))
        )
        figures["latency"] = latency("mobilenet0", work, files, args.queries)
        figures["latency"].update(one_off_query("mobilenet0", work, files[0]))
    figures["load_average_after"] = os.getloadavg()[0]
    if args.sweep:
        figures["sweep"] = sweep(files, labels)

    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print_table(figures)


def print_table(figures: dict) -> None:
    print("Corel-1k, CNN features (leave-one-out, AP over the other 999 images)")
    print(f"  {'MobileNet ImageNet, avg pool':<34}{'P@10':>8}{'P@20':>8}{'mAP':>8}")
    for key, q in figures["quality"].items():
        label = "no PCA" if key == "none" else key.replace("pca", "PCA-").replace("w", " whitened")
        print(f"  {label:<34}{q['p@10']:8.4f}{q['p@20']:8.4f}{q['map']:8.4f}")
    print("  targets: P@10 >= 0.955 and mAP >= 0.85 without PCA; mAP >= 0.875 with the best PCA")
    print()
    print(f"  {'images/s (batch 32)':<20}{'images':>7}{'LiteRT':>8}{'OpenVINO':>9}{'Keras':>8}{'default':>10}{'/Keras':>7}{'end-to-end':>11}{'e2e/model':>10}{'cosine':>11}{'build s':>9}{'open s':>8}")
    for backbone, s in figures["speed"].items():
        rates = s["model_only"]
        print(
            f"  {backbone + ' (' + s['weights'].split()[0] + ')':<20}{s['images']:>7}{rates['tflite']:8.1f}"
            f"{rates.get('openvino', float('nan')):9.1f}{rates['keras']:8.1f}{s['default_runtime']:>10}"
            f"{s['default_vs_keras']:7.2f}{s['end_to_end']:11.1f}"
            f"{s['end_to_end_vs_model_only']:10.2f}{s['min_cosine_default_keras']:11.7f}"
            f"{s['build_and_convert_s']:9.1f}{s['open_index_s']:8.2f}"
        )
    print("  targets: default/Keras >= 2.5 (MobileNet), >= 1.5 (ResNet50); end-to-end >= 0.9 x model only; cosine >= 0.9999")
    print(f"  load average (1 min) {figures['load_average_before']:.1f} before, {figures['load_average_after']:.1f} after the timings (2 cores)")
    lat = figures["latency"]
    print()
    print(f"  query latency (MobileNet, open index): median {lat['median_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms over {lat['queries']} queries")
    print(f"  one-off `cbir query` in a new process: {lat['cli_query_s']:.2f} s (`import tensorflow` alone: {lat['import_tensorflow_s']:.2f} s)")
    if "sweep" in figures:
        print()
        print(f"  {'resize/pooling sweep':<34}{'P@10':>8}{'P@20':>8}{'mAP':>8}")
        for key, q in figures["sweep"].items():
            print(f"  {key:<34}{q['p@10']:8.4f}{q['p@20']:8.4f}{q['map']:8.4f}")


if __name__ == "__main__":
    main()
