"""HEIC decoding in cbir against a plain pillow-heif decode, and what reading metadata costs indexing.

1. HEIC throughput: Corel-1k images re-encoded as HEIC (in a temporary
   folder) at their own size, and at phone size (4x: 1536x1024) with a
   320-pixel thumbnail as phones store one. cbir's ``decode_file`` (pixel
   cap, orientation, metadata, the thumbnail where the colour extractor's
   ``min_side`` allows) against ``np.asarray(pillow_heif.open_heif(data))``
   of the same bytes: images/s and the ratio.
2. Metadata cost: ``cbir index`` of Corel-1k (colour, one process) with the
   metadata reader as it is and with it replaced by a stub, best of
   ``--repeat`` runs each: the ratio is the slowdown.

    python benchmarks/formats.py [--images 200] [--repeat 3] [--json]
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

import cbir.images.decode as decode  # noqa: E402
from cbir.features.color import ColorHistogram  # noqa: E402
from cbir.images.metadata import PhotoInfo  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402


def heic_files(files: list[Path], scale: int, thumbnail: int | None) -> list[bytes]:
    import io

    import pillow_heif
    from PIL import Image

    encoded = []
    for path in files:
        rgb = cv2.imread(str(path))[:, :, ::-1]
        if scale > 1:
            rgb = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
        buffer = io.BytesIO()
        pillow_heif.from_pillow(Image.fromarray(np.ascontiguousarray(rgb))).save(
            buffer, format="HEIF", quality=80, thumbnails=[thumbnail] if thumbnail else []
        )
        encoded.append(buffer.getvalue())
    return encoded


def throughput(decode_one, datas: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for data in datas:
            decode_one(data)
        best = min(best, time.perf_counter() - started)
    return len(datas) / best


def heic_figures(files: list[Path], repeat: int) -> list[dict]:
    import pillow_heif

    min_side = ColorHistogram().decode_min_side
    rows = []
    for label, scale, thumbnail in (("corel size (384x256)", 1, None), ("phone size (1536x1024, 320-px thumbnail)", 4, 320)):
        datas = heic_files(files, scale, thumbnail)
        plain = throughput(lambda d: np.asarray(pillow_heif.open_heif(d)), datas, repeat)
        cbir = throughput(lambda d: decode.decode_file(d, ".heic", min_side), datas, repeat)
        full = throughput(lambda d: decode.decode_file(d, ".heic"), datas, repeat)
        rows.append({
            "files": label, "images": len(datas), "min_side": min_side,
            "pillow_heif_per_s": round(plain, 1), "cbir_per_s": round(cbir, 1), "cbir_full_size_per_s": round(full, 1),
            "ratio": round(cbir / plain, 2), "ratio_full_size": round(full / plain, 2),
        })
    return rows


def metadata_cost(files: list[Path], repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corel"
        folder.mkdir()
        for path in files:
            (folder / path.name).symlink_to(path)
        real = decode.read_photo_info

        def build(n: int) -> float:
            started = time.perf_counter()
            index_folder(folder, f"run{n}", Path(tmp) / "indexes", workers=1)
            return time.perf_counter() - started

        with_metadata, without = [], []
        for n in range(repeat):
            decode.read_photo_info = real
            with_metadata.append(build(2 * n))
            decode.read_photo_info = lambda data, width=0, height=0: PhotoInfo(width, height)
            without.append(build(2 * n + 1))
        decode.read_photo_info = real
    return {
        "images": len(files), "with_metadata_s": round(min(with_metadata), 3), "without_metadata_s": round(min(without), 3),
        "slowdown": round(min(with_metadata) / min(without), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="Corel images re-encoded as HEIC")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files = corel_files()
    result = {"heic": heic_figures(files[: args.images], args.repeat), "metadata": metadata_cost(files, args.repeat)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for row in result["heic"]:
        print(
            f"HEIC, {row['files']}: pillow-heif {row['pillow_heif_per_s']}/s, cbir {row['cbir_per_s']}/s "
            f"(x{row['ratio']}; full size x{row['ratio_full_size']})"
        )
    m = result["metadata"]
    print(f"index Corel-1k (colour, 1 process): {m['with_metadata_s']} s with metadata, {m['without_metadata_s']} s without (x{m['slowdown']})")


if __name__ == "__main__":
    main()
