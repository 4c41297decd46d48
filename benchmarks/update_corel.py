"""Incremental update on Corel-1k: after adding 10 files, only those 10 are decoded.

Builds a temporary folder of symbolic links to the 1000 Corel images (the
dataset itself is never copied), indexes it, adds 10 new images, and updates
the index, counting every decode. Prints the counts and the time of the
update next to the time of the full build.

    python benchmarks/update_corel.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import corel_files  # noqa: E402

import cbir.images.decode  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    decodes = []
    real_decode = cbir.images.decode.decode_image

    def counting_decode(data, min_side=None):
        decodes.append(1)
        return real_decode(data, min_side)

    cbir.images.decode.decode_image = counting_decode
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "photos"
        folder.mkdir()
        for path in corel_files():
            (folder / path.name).symlink_to(path)
        started = time.perf_counter()
        build = index_folder(folder, "corel", Path(work) / "indexes")
        build_seconds = time.perf_counter() - started
        build_decodes = len(decodes)

        rng = np.random.default_rng(0)
        for n in range(10):
            cv2.imwrite(str(folder / f"new-{n}.jpg"), rng.integers(0, 256, size=(256, 384, 3), dtype=np.uint8))
        decodes.clear()
        started = time.perf_counter()
        update = index_folder(folder, "corel", Path(work) / "indexes")
        update_seconds = time.perf_counter() - started

    figures = {
        "build_images": build.total,
        "build_decodes": build_decodes,
        "build_seconds": round(build_seconds, 3),
        "update_added": update.added,
        "update_unchanged": update.unchanged,
        "update_decodes": len(decodes),
        "update_seconds": round(update_seconds, 3),
        "total_after_update": update.total,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"build:  {build.total} images, {build_decodes} decodes, {build_seconds:.2f} s")
    print(f"update: +{update.added} added, {update.unchanged} unchanged, {len(decodes)} decodes, {update_seconds:.2f} s")
    print(f"index now holds {update.total} images (target: the update decodes only the 10 new files)")


if __name__ == "__main__":
    main()
