"""Autoencoder extractor on Corel-1k: retrieval quality against raw pixels and colour histograms, and training time.

Trains the denoising autoencoder on the 1000 Corel images (the collection is
its own training set: that is what the extractor is for), indexes them with
the trained model through the normal indexing path, and evaluates leave-one-out
(every image a query, relevant = the other 99 of its class, AP over the full
ranking of the other 999) through the normal search path, so the query side
loads the model stored in the index. Both embeddings of the same model are
scored. Baselines on the same images, cosine similarity:

* raw pixels: the image resized to ``s x s`` RGB (INTER_AREA), mean-centred
  over the collection, for ``s`` = 4, 8, 16, 32 and the ``s`` whose ``3 s^2``
  is nearest each autoencoder embedding's dimension;
* the colour histogram extractor (``color``).

    python benchmarks/autoencoder_corel.py [--json] [--seed 0] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL, COREL_LABELS, corel_files  # noqa: E402

from cbir.evaluation.protocols import evaluate_index, evaluate_vectors  # noqa: E402
from cbir.features.autoencoder import AutoencoderExtractor  # noqa: E402
from cbir.indexing.train import train_autoencoder  # noqa: E402
from cbir.features.base import l2_normalize, make_extractor  # noqa: E402
from cbir.features.pipeline import Embedder  # noqa: E402
from cbir.images.decode import read_image  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402


def raw_pixel_vectors(images: list[np.ndarray], side: int) -> np.ndarray:
    """Images resized to ``side x side`` RGB, flattened and mean-centred, L2-normalised."""
    vectors = np.stack([cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA) for image in images])
    vectors = vectors.reshape(len(images), -1).astype(np.float32)
    return l2_normalize(vectors - vectors.mean(axis=0))


def figures_of(report) -> dict[str, float]:
    return {"p@10": round(report.precision[10], 4), "p@20": round(report.precision[20], 4), "map": round(report.map, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the extractor's)")
    parser.add_argument("--keep", type=Path, default=None, help="train into this folder and keep it (model, history, loss plot)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log one line per epoch on stderr")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    files = corel_files()
    params = {"seed": args.seed} if args.epochs is None else {"seed": args.seed, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.keep or Path(tmp) / "model"
        started = time.perf_counter()
        extractor = train_autoencoder(COREL / "images", model_dir, **params)
        training_seconds = time.perf_counter() - started
        history = extractor.history_

        autoencoder = {}
        for embedding in ("pool", "flatten"):
            embedder = Embedder(AutoencoderExtractor.from_pretrained(model_dir, embedding=embedding))
            index_folder(COREL / "images", embedding, tmp, embedder=embedder, labels=COREL_LABELS)
            report = evaluate_index(embedding, tmp, labels=COREL_LABELS)
            autoencoder[embedding] = {"dim": embedder.dim, **figures_of(report)}

    labels = [int(path.stem) // 100 for path in files]
    images = [read_image(path) for path in files]
    sides = sorted({4, 8, 16, 32} | {max(1, round(np.sqrt(result["dim"] / 3))) for result in autoencoder.values()})
    raw = {}
    for side in sides:
        raw[f"{side}x{side}"] = {"side": side, "dim": 3 * side * side, **figures_of(evaluate_vectors(raw_pixel_vectors(images, side), labels))}
    colour = make_extractor("color")
    colour_result = {"dim": colour.dim, **figures_of(evaluate_vectors(colour.transform(images), labels))}

    figures = {
        "images": len(files),
        "params": extractor.get_params(),
        "training_seconds": round(training_seconds, 1),
        "epochs_run": len(history["epochs"]),
        "best_epoch": history["best_epoch"],
        "autoencoder": autoencoder,
        "raw_pixels": raw,
        "color_histogram": colour_result,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"Corel-1k, {len(files)} images, leave-one-out, cosine")
    print(f"  training: {figures['training_seconds']:.1f} s for {figures['epochs_run']} epochs (best {figures['best_epoch']}), "
          f"target < 600 s")
    print(f"  {'method':34s} {'dim':>5s} {'P@10':>7s} {'P@20':>7s} {'mAP':>7s}")
    rows = [(f"autoencoder, {name}", result) for name, result in autoencoder.items()]
    rows += [(f"raw pixels {name}", result) for name, result in raw.items()]
    rows += [("colour histogram", colour_result)]
    for name, result in rows:
        print(f"  {name:34s} {result['dim']:5d} {result['p@10']:7.4f} {result['p@20']:7.4f} {result['map']:7.4f}")


if __name__ == "__main__":
    main()
