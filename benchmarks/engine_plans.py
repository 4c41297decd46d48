"""Converted engines under the server's batch sizes: plans made and time per image.

The server's batcher hands the network whatever queued during the previous
batch, so batch sizes below 4 change all the time. This replays such a
sequence (random sizes 1-9, seeded) through each engine twice, in one
process: as cbir runs it (:class:`cbir.features.runtimes.ConvertedNetwork`:
OpenVINO keeps one compiled model per chunk size 1, 2, 4; LiteRT resizes
its interpreter, which costs nothing measurable) and, as the reference,
re-planning on every change of size below 4 (cbir before). MobileNet with
the shared ImageNet weights; ResNet50 with random weights (``--backbones``).

    python benchmarks/engine_plans.py [--json] [--batches 60] [--backbones mobilenet,resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# An application: it keeps TensorFlow's and the engines' notices off the terminal, as the cbir command does.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CBIR_QUIET_ENGINES", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import MOBILENET_WEIGHTS  # noqa: E402

from cbir.features.cnn import CNNExtractor  # noqa: E402
from cbir.features.runtimes import NETWORKS, openvino_available  # noqa: E402

SIZE = 224


def _replanning(engine):
    """The engine as before: one plan at a time, every size below 4 planned exactly."""
    return type(f"Replanning{engine.__name__}", (engine,), {"sizes": (1, 2, 3, 4), "keeps_plans": False})


def _replay(network, batches) -> tuple[float, int]:
    plans = []
    plan = network._plan
    network._plan = lambda chunk: (plans.append(chunk), plan(chunk))[1]
    network(batches[0][:1])  # the first plan in a process is the same either way
    plans.clear()
    start = time.perf_counter()
    for batch in batches:
        network(batch)
    return time.perf_counter() - start, len(plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--backbones", default="mobilenet,resnet50")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 10, args.batches)
    batches = [rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8) for n in sizes]
    engines = ["tflite"] + (["openvino"] if openvino_available() else [])
    figures = []
    for backbone in args.backbones.split(","):
        weights = str(MOBILENET_WEIGHTS) if backbone == "mobilenet" else "none"
        model = CNNExtractor(backbone=backbone, weights=weights, input_size=SIZE).build().tflite_model_
        for engine in engines:
            now_s, now_plans = _replay(NETWORKS[engine](model, SIZE), batches)
            before_s, before_plans = _replay(_replanning(NETWORKS[engine])(model, SIZE), batches)
            row = {
                "backbone": backbone, "engine": engine, "batches": len(batches), "images": int(sizes.sum()),
                "plans": now_plans, "plans_replanning": before_plans,
                "ms_per_image": 1000 * now_s / sizes.sum(), "ms_per_image_replanning": 1000 * before_s / sizes.sum(),
                "speedup": before_s / now_s,
            }
            figures.append(row)
            if not args.json:
                print(
                    f"{backbone:10s} {engine:8s} plans {now_plans:3d} (re-planning: {before_plans:3d})  "
                    f"{row['ms_per_image']:6.1f} ms/image (re-planning: {row['ms_per_image_replanning']:6.1f})  "
                    f"x{row['speedup']:.2f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
