"""The scale benchmark's data, made and scored in blocks so that no step holds the whole haystack.

The synthetic haystack is generated block by block, each block from its own
seed, so any pass over it (catalogue, ground truth, training sample, index
fill) regenerates the same rows without keeping them; exact ground truth is
a top-k merge over those blocks (``faiss.knn`` per block into a
``faiss.ResultHeap``). The real Corel crops are small (250,000 rows) and cached.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from _corel import COREL_LABELS, corel_files

from cbir.features.base import l2_normalize

#: Rows a block of the synthetic haystack holds (100 MB at 256-d).
BLOCK = 100_000


class SyntheticHaystack:
    """``n`` unit vectors shaped like image descriptors (see :func:`synthetic`), then ``tail`` (the Corel vectors).

    Block ``b`` is generated from seed ``(seed, b)``: the same rows each pass, none kept.
    Row ``i`` has catalogue id ``i + 1``.
    """

    def __init__(self, n_synthetic: int, dim: int, clusters: int, tail: np.ndarray, seed: int = 0):
        self.n_synthetic, self.dim, self.clusters, self.tail, self.seed = n_synthetic, dim, clusters, tail, seed

    def __len__(self) -> int:
        return self.n_synthetic + len(self.tail)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` blocks in id order."""
        for number, start in enumerate(range(0, self.n_synthetic, BLOCK)):
            count = min(BLOCK, self.n_synthetic - start)
            yield np.arange(start + 1, start + 1 + count, dtype=np.int64), synthetic(count, self.dim, (self.seed, number), self.clusters)
        if len(self.tail):
            yield np.arange(self.n_synthetic + 1, len(self) + 1, dtype=np.int64), self.tail

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` rows drawn at random without replacement (one pass over the blocks)."""
        chosen = np.sort(np.random.default_rng(seed).choice(len(self), size=min(n, len(self)), replace=False)) + 1
        parts = []
        for ids, vectors in self.blocks():
            mine = chosen[(chosen >= ids[0]) & (chosen <= ids[-1])]
            parts.append(vectors[mine - ids[0]])
        return np.concatenate(parts)


def exact_neighbours(blocks, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top ``k`` (inner product) of each query over ``(ids, vectors)`` blocks."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    for ids, vectors in blocks:
        scores, rows = faiss.knn(queries, np.ascontiguousarray(vectors), min(k, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
        found = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            scores = np.hstack([scores, np.full((len(queries), pad), -np.inf, np.float32)])
            found = np.hstack([found, np.full((len(queries), pad), -1, np.int64)])
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(found, dtype=np.int64))
    heap.finalize()
    return heap.I


def synthetic(n: int, dim: int, seed, clusters: int, intrinsic: int = 32) -> np.ndarray:
    """Unit vectors shaped like image descriptors: clusters in a low-dimensional subspace, plus noise.

    Real features have a low intrinsic dimension (a few dozen) inside their
    ambient space; here Gaussian clusters live in ``intrinsic`` latent
    dimensions, mapped into ``dim`` by a fixed orthonormal basis (the same
    for every seed, so queries share the haystack's subspace), with a little
    isotropic noise on top.
    """
    basis, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, intrinsic)))
    basis = basis.T.astype(np.float32)
    centre_rng, rng = np.random.default_rng(54321), np.random.default_rng(seed)
    centres = centre_rng.standard_normal((clusters, intrinsic), dtype=np.float32)
    widths = centre_rng.uniform(0.3, 0.8, size=clusters).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(0, clusters, size=stop - start)
        latent = centres[which] + rng.standard_normal((stop - start, intrinsic), dtype=np.float32) * widths[which, None]
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.05
        out[start:stop] = l2_normalize(latent @ basis + noise)
    return out


def corel_vectors(dim: int) -> tuple[np.ndarray, list[str]]:
    """Colour-histogram vectors of Corel-1k, PCA-reduced to ``dim``, and their labels."""
    from cbir.features.color import ColorHistogram
    from cbir.features.pca import PCAReduction
    from cbir.images.decode import read_image
    from cbir.images.labels import read_labels_csv

    extractor = ColorHistogram()
    files = corel_files()
    raw = extractor.transform([read_image(p, extractor.decode_min_side) for p in files])
    labels_by_path = read_labels_csv(COREL_LABELS)
    return PCAReduction(dim).fit(raw).transform(raw), [labels_by_path[str(p)] for p in files]


def cache_dir() -> Path:
    """Where generated data is kept between runs: outside the repository."""
    folder = Path(os.environ.get("CBIR_BENCH_CACHE") or Path(tempfile.gettempdir()) / "cbir-bench-cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def real_descriptors(n: int, n_queries: int, dim: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colour histograms of random crops, scales and flips of the Corel photos: ``(haystack, queries)``.

    Both sides are real descriptors, with the uneven density of real
    collections (many near-copies of one photo, sparse regions between
    subjects), which synthetic Gaussian clusters lack. The queries are other
    random crops, never in the haystack. Reduced by a PCA fitted on a sample
    to ``dim`` (``None``: the extractor's own 1440-d histograms, as a colour
    index stores them); cached in :func:`cache_dir` (a few minutes to generate).
    """
    cache = cache_dir() / f"corel-crops-{n}-{n_queries}-{dim}-{seed}.npz"
    if cache.is_file():
        with np.load(cache) as arrays:
            return arrays["haystack"], arrays["queries"]
    import cv2

    from cbir.features.color import ColorHistogram
    from cbir.features.pca import PCAReduction
    from cbir.images.decode import read_image

    photos = [read_image(p, 128) for p in corel_files()]
    rng = np.random.default_rng(seed)

    def crops(count: int) -> np.ndarray:
        extractor = ColorHistogram()  # fresh per block: its region-map cache grows with crop shapes
        out = np.empty((count, extractor.dim), dtype=np.float32)
        for i in range(count):
            photo = photos[rng.integers(len(photos))]
            h, w = photo.shape[:2]
            ch, cw = (int(side * rng.uniform(0.4, 1.0)) // 8 * 8 or 8 for side in (h, w))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = photo[y : y + ch, x : x + cw]
            scale = rng.uniform(0.5, 1.0)
            crop = cv2.resize(crop, (max(8, int(cw * scale)) // 8 * 8, max(8, int(ch * scale)) // 8 * 8), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[i] = extractor.prepare(np.ascontiguousarray(crop))
        return out

    reduce = (lambda rows: rows) if dim is None else PCAReduction(dim).fit(crops(min(20_000, n))).transform
    blocks = []
    for start in range(0, n + n_queries, 20_000):
        blocks.append(reduce(crops(min(20_000, n + n_queries - start))))
    vectors = np.concatenate(blocks)
    haystack, queries = vectors[:n], vectors[n:]
    temporary = cache.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(temporary, haystack=haystack, queries=queries)
    os.replace(temporary, cache)
    return haystack, queries
