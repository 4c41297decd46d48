"""Autoencoder extractor on Fashion-MNIST (greyscale): retrieval quality against raw pixels.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (IDX files
under ``usr/share/datasets/fashion-mnist``): used in place if the package is
installed, else fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` into a temporary folder. The IDX files are converted to PNG
files there (``train/<class>/<n>.png``, ``test/<class>/<n>.png``), so the
benchmark runs the same path as a user's folder of images:

1. train the autoencoder (greyscale) on the 60,000 training images;
2. index the 10,000 test images with the trained model;
3. evaluate leave-one-out on the test index (every test image a query,
   relevant = the other test images of its class, AP over the full ranking),
   labels from the class folder names.

Baseline: the test images' raw pixels resized to ``s x s`` (``s^2`` nearest the
autoencoder's dimension, and the full 28 x 28), mean-centred, cosine.

    python benchmarks/autoencoder_fashion_mnist.py [--json] [--epochs 10] [--data DIR]
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
from _fashion_mnist import CLASSES, FILES, dataset_folder, read_idx  # noqa: E402,F401

from cbir.evaluation.protocols import evaluate_index, evaluate_vectors  # noqa: E402
from cbir.features.autoencoder import AutoencoderExtractor  # noqa: E402
from cbir.indexing.train import train_autoencoder  # noqa: E402
from cbir.features.base import l2_normalize  # noqa: E402
from cbir.features.pipeline import Embedder  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402

#: Extractor parameters for 28 x 28 greyscale images: 32 px input so three
#: stride-2 blocks divide it evenly.
PARAMS = {"input_size": 32, "channels": 1, "filters": [32, 64, 128], "latent_channels": 32, "epochs": 10, "patience": 3}


def write_pngs(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        if not cv2.imwrite(str(folder / CLASSES[label] / f"{i:05d}.png"), image):
            raise OSError(f"cannot write PNG files into {folder}")


def raw_pixel_vectors(images: np.ndarray, side: int) -> np.ndarray:
    """Greyscale images resized to ``side x side``, flattened, mean-centred, L2-normalised."""
    vectors = np.stack([cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA) for image in images])
    vectors = vectors.reshape(len(images), -1).astype(np.float32)
    return l2_normalize(vectors - vectors.mean(axis=0))


def figures_of(report) -> dict[str, float]:
    return {"p@10": round(report.precision[10], 4), "map": round(report.map, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--epochs", type=int, default=PARAMS["epochs"], help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data", type=Path, default=None, help="folder with the four IDX .gz files (default: installed or downloaded)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log one line per epoch on stderr")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="cbir-fashion-mnist-") as tmp:
        work = Path(tmp)
        source = dataset_folder(work, args.data)
        arrays = {split: (read_idx(source / images), read_idx(source / labels)) for split, (images, labels) in FILES.items()}
        started = time.perf_counter()
        for split, (images, labels) in arrays.items():
            write_pngs(images, labels, work / split)
        conversion_seconds = time.perf_counter() - started

        params = {**PARAMS, "epochs": args.epochs, "seed": args.seed}
        started = time.perf_counter()
        extractor = train_autoencoder(work / "train", work / "model", **params)
        training_seconds = time.perf_counter() - started

        autoencoder = {}
        for embedding in ("pool", "flatten"):
            embedder = Embedder(AutoencoderExtractor.from_pretrained(work / "model", embedding=embedding))
            index_folder(work / "test", embedding, work / "indexes", embedder=embedder)
            autoencoder[embedding] = {"dim": embedder.dim, **figures_of(evaluate_index(embedding, work / "indexes"))}

    test_images, test_labels = arrays["test"]
    raw = {}
    for side in sorted({28} | {round(np.sqrt(result["dim"])) for result in autoencoder.values()}):
        raw[f"{side}x{side}"] = {"dim": side * side, **figures_of(evaluate_vectors(raw_pixel_vectors(test_images, side), test_labels))}

    figures = {
        "train_images": len(arrays["train"][0]),
        "test_images": len(test_images),
        "params": extractor.get_params(),
        "png_conversion_seconds": round(conversion_seconds, 1),
        "training_seconds": round(training_seconds, 1),
        "epochs_run": len(extractor.history_["epochs"]),
        "best_epoch": extractor.history_["best_epoch"],
        "autoencoder": autoencoder,
        "raw_pixels": raw,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"Fashion-MNIST: trained on {figures['train_images']} images, leave-one-out on {figures['test_images']} test images, cosine")
    print(f"  IDX to PNG: {figures['png_conversion_seconds']:.1f} s; training: {figures['training_seconds']:.1f} s "
          f"for {figures['epochs_run']} epochs (best {figures['best_epoch']})")
    print(f"  {'method':28s} {'dim':>5s} {'P@10':>7s} {'mAP':>7s}")
    rows = [(f"autoencoder, {name}", result) for name, result in autoencoder.items()]
    rows += [(f"raw pixels {name}", result) for name, result in raw.items()]
    for name, result in rows:
        print(f"  {name:28s} {result['dim']:5d} {result['p@10']:7.4f} {result['map']:7.4f}")


if __name__ == "__main__":
    main()
