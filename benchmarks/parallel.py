"""Indexing throughput on every core and on Ray, against what the machine can decode.

The collection: Corel-1k and its 8 flips/rotations (the dihedral group of the
square: 8,000 JPEGs), generated into a temporary folder from
``../shared/datasets/corel1k`` and deleted afterwards (never committed).
All figures come from one run on one machine, so ratios compare like with like:

* ``imread x1``: a single-threaded ``cv2.imread`` loop over the files;
* ``imread pool xN``: N processes each running plain ``cv2.imread``
  (N = usable cores): what the machine can decode;
* ``reduced decode pool xN``: the same N processes running cbir's own decode
  at the colour extractor's reduced scale and nothing else: the most any
  colour index can reach on these files (hashing, histograms, the catalogue
  and DBA all come on top);
* ``colour --workers k`` for k = 1, 2, ..., N: ``index_folder`` end to end
  (read, hash, decode, histogram, commit, FAISS) into a new index; with the
  indexing process's own CPU per image at N: the commit loop, the hand-over
  of results and DBA's matrix products (these on every core), the part that
  does not spread over more workers;
* ``colour ray``: the same on a local Ray cluster of N CPUs (cluster start
  reported apart), twice: the cluster's first Ray Data job, which also starts
  Ray Data's detached helper actors, and a second job, as every later
  ``cbir index --ray`` on a long-lived cluster finds it;
* MobileNet (the shared ImageNet weights) on all the images (or
  ``--cnn-images``): model only (``transform_prepared`` on images decoded
  and resized beforehand, all cores to the network: one engine with N
  threads, and N one-thread engines side by side; on all the images before
  the end-to-end run and on 2,048 after it, the ratio taken against the
  mean, as the machine's speed drifts), end to end with ``--workers N``,
  and end to end on Ray;
* peak memory of a colour run (a new process) over all the images and over
  the first 1,000: the parent's peak RSS and the largest worker's;
* DBA's neighbour search, the end of a first build, timed on the colour
  index's vectors and on 2x and 4x as many (noisy copies): exact (every
  vector against every other, growing with the square of the collection)
  and approximate (the default above a size: IVF over a PCA projection,
  candidates re-scored exactly) with its recall against exact; extrapolated
  to 100,000 and 1,000,000 next to the time the colour run would take to
  index them.

    python benchmarks/parallel.py [--json] [--images 8000] [--cnn-images 8000] [--no-ray] [--no-cnn] [--scale 1]

Speed is shared-machine sensitive: run it alone (``flock /tmp/cbir-bench.lock ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import MOBILENET_WEIGHTS, REPO, corel_files  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from cbir.features.color import ColorHistogram  # noqa: E402
from cbir.cpus import usable_cores  # noqa: E402
from cbir.progress import Progress  # noqa: E402

_TRANSFORMS = [
    lambda im: im,
    lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
    lambda im: cv2.rotate(im, cv2.ROTATE_180),
    lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
    lambda im: cv2.flip(im, 1),
    lambda im: cv2.flip(im, 0),
    lambda im: cv2.transpose(im),
    lambda im: cv2.flip(cv2.transpose(im), -1),
]


#: JPEG qualities the variants are written at: past Corel x 8 (8,000 files) a second quality gives 8,000 more distinct files.
_QUALITIES = (90, 80)


def _make_variants(job: tuple[str, str, float, tuple[int, ...]]) -> int:
    source, out_dir, scale, qualities = job
    image = cv2.imread(source)
    if scale != 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    stem = Path(source).stem
    for q, quality in enumerate(qualities):
        for n, transform in enumerate(_TRANSFORMS):
            folder = Path(out_dir) / f"t{q * len(_TRANSFORMS) + n}"
            cv2.imwrite(str(folder / f"{stem}.jpg"), transform(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return len(_TRANSFORMS) * len(qualities)


def make_collection(out_dir: Path, n_images: int, cores: int, scale: float = 1.0) -> list[Path]:
    """Corel-1k x 8 flips/rotations under ``out_dir`` (the first ``n_images`` of them), sides times ``scale``.

    Above 8,000 files, the same 8 again at a lower JPEG quality (other bytes, other pixels): up to 16,000 distinct files.
    """
    corel = [str(p) for p in corel_files()]
    most = len(corel) * len(_TRANSFORMS) * len(_QUALITIES)
    if n_images > most:
        raise SystemExit(f"at most {most} distinct files can be made from Corel-1k, not {n_images}")
    qualities = _QUALITIES[: -(-n_images // (len(corel) * len(_TRANSFORMS)))]  # the second only when needed
    per_source = len(_TRANSFORMS) * len(qualities)
    for n in range(per_source):
        (out_dir / f"t{n}").mkdir(parents=True, exist_ok=True)
    sources = corel[: -(-n_images // per_source)]  # no more than needed
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        sum(pool.imap_unordered(_make_variants, [(s, str(out_dir), scale, qualities) for s in sources], chunksize=16))
    files = sorted(out_dir.rglob("*.jpg"))
    for extra in files[n_images:]:
        extra.unlink()
    return files[:n_images]


def _imread(path: str) -> int:
    image = cv2.imread(path)
    return 0 if image is None else 1


def imread_loop(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        _imread(str(path))
    return len(files) / (time.perf_counter() - started)


def _reduced_decode(job: tuple[str, int]) -> int:
    from cbir.images.decode import read_image

    path, min_side = job
    return int(read_image(path, min_side=min_side) is not None)


def imread_pool(files: list[Path], processes: int, min_side: int | None = None) -> float:
    """Images/s of ``processes`` processes decoding: plain ``cv2.imread``, or cbir's reduced decode."""
    decode, jobs = (_imread, [str(p) for p in files]) if min_side is None else (_reduced_decode, [(str(p), min_side) for p in files])
    with multiprocessing.get_context("spawn").Pool(processes, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        pool.map(decode, jobs[:processes])  # workers started before the clock
        started = time.perf_counter()
        decoded = sum(pool.imap_unordered(decode, jobs, chunksize=32))
        seconds = time.perf_counter() - started
    assert decoded == len(jobs)
    return len(jobs) / seconds


class _FirstBatchClock(Progress):
    """A progress receiver that notes when the first files come back (workers or actors started)."""

    def __init__(self):
        self.first_at, self.first_count = None, 0

    def advance(self, steps=1):
        # Not the indexer's opening advance(0) (files already done): the first files that come back.
        if self.first_at is None and steps:
            self.first_at, self.first_count = time.perf_counter(), steps


def index_speed(folder: Path, work: Path, name: str, steady: dict | None = None, **options) -> float:
    """Images/s of a new index end to end; with ``steady``, also after the first batch (start-up excluded)."""
    from cbir.indexing.run import index_folder

    clock = _FirstBatchClock()
    cpu = time.process_time()  # this process: the indexer's parent, all its threads
    started = time.perf_counter()
    summary = index_folder(folder, name, work, progress=clock, **options)
    ended = time.perf_counter()
    if steady is not None:
        steady["parent_cpu_ms_per_image"] = round((time.process_time() - cpu) * 1000 / max(summary.embedded, 1), 3)
    if steady is not None and clock.first_at is not None and ended > clock.first_at:
        steady["after_first_batch"] = round((summary.embedded - clock.first_count) / (ended - clock.first_at), 1)
        steady["first_batch_s"] = round(clock.first_at - started, 1)
    return summary.embedded / (ended - started)


# VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would count the benchmark's own memory.
_MEMORY_SCRIPT = """
import json, resource, sys
from cbir.indexing.run import index_folder
index_folder(sys.argv[1], "memory", sys.argv[2], workers=int(sys.argv[3]))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"parent_mib": hwm / 1024,
                  "largest_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def peak_memory(folder: Path, work: Path, workers: int) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(folder), str(work), str(workers)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return {k: round(v, 1) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def dba_growth(index: Path, colour_speed: float) -> dict:
    """Seconds of DBA's neighbour search over the index's vectors, x1, x2 and x4 (noisy copies), and extrapolated.

    Exact (every pair) and approximate (IVF over a PCA projection, the path
    above :data:`cbir.ann.approximate.APPROXIMATE_FROM`, forced on here at
    every size) with its recall@K against exact; ``benchmarks/dba_scale.py``
    measures both on real crops up to 256,000 vectors.
    """
    from cbir.ann import approximate
    from cbir.ann.rerank import DEFAULT_DBA, nearest_neighbours
    from cbir.store.directory import IndexStore

    with IndexStore.open(index) as store:
        vectors = np.concatenate([block for _, block in store.catalogue.iter_vectors(store.dim)])
    rng = np.random.default_rng(0)
    seconds, approximate_seconds, recall = {}, {}, {}
    for copies in (1, 2, 4):
        grown = np.concatenate([vectors] + [vectors + rng.normal(0, 0.01, vectors.shape).astype(np.float32) for _ in range(copies - 1)])
        grown /= np.linalg.norm(grown, axis=1, keepdims=True)
        started = time.perf_counter()
        truth, _ = nearest_neighbours(grown, DEFAULT_DBA)
        seconds[len(grown)] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        rule = approximate.approximate_rule(len(grown), DEFAULT_DBA)
        found, _ = approximate.approximate_top_k(grown, grown, DEFAULT_DBA, own_rows=np.arange(len(grown)), rule=rule)
        approximate_seconds[len(grown)] = round(time.perf_counter() - started, 2)
        recall[len(grown)] = round(float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())])), 4)
    largest = max(seconds)
    figures = {"neighbours_s": seconds, "approximate_s": approximate_seconds, "approximate_recall": recall}
    for n in (100_000, 1_000_000):
        figures[f"extrapolated_{n}"] = {
            "dba_s": round(seconds[largest] * (n / largest) ** 2),
            # n^1.5: the IVF part's growth (nlist ~ 4 sqrt(n), nprobe fixed); an upper bound of the re-scoring's n
            "approximate_dba_s": round(approximate_seconds[largest] * (n / largest) ** 1.5),
            "indexing_s": round(n / colour_speed),
        }
    return figures


def cnn_figures(files: list[Path], work: Path, cores: int, ray: bool) -> dict[str, float]:
    """MobileNet: model only vs end to end with all workers (and on Ray)."""
    from cbir.features import runtimes
    from cbir.features.cnn import CNNExtractor
    from cbir.features.pipeline import Embedder
    from cbir.images.decode import read_image

    folder = work / "cnn-images"
    folder.mkdir()
    for path in files:
        (folder / f"{path.parent.name}-{path.name}").symlink_to(path)
    extractor = CNNExtractor(weights=str(MOBILENET_WEIGHTS))
    extractor.build()  # the network, before the clock
    # Model only, two ways: one engine on every core, and one engine per core
    # (one thread each, side by side: what --workers N runs).
    extractor.save(work / "cnn-state")
    runtimes.limit_threads(1)
    engines = [CNNExtractor(weights=str(MOBILENET_WEIGHTS)).load_state(work / "cnn-state") for _ in range(cores)]
    runtimes.limit_threads(None)
    warm = [extractor.prepare(read_image(files[0]))] * 32
    for network in [extractor, *engines]:
        network.transform_prepared(warm)  # plan the batch shape

    def run(network, items) -> None:
        for i in range(0, len(items), 32):
            network.transform_prepared(items[i : i + 32])

    def model_only(some: list[Path]) -> tuple[float, float]:
        one_engine = per_core = 0.0
        with ThreadPoolExecutor(cores) as pool:  # LiteRT releases the GIL while it runs
            for chunk in range(0, len(some), 1024):  # decoded 1,024 at a time, off the clock: memory stays bounded
                prepared = [extractor.prepare(read_image(p, min_side=extractor.decode_min_side)) for p in some[chunk : chunk + 1024]]
                started = time.perf_counter()
                run(extractor, prepared)
                one_engine += time.perf_counter() - started
                started = time.perf_counter()
                list(pool.map(run, engines, [prepared[k::cores] for k in range(cores)]))
                per_core += time.perf_counter() - started
        return len(some) / one_engine, len(some) / per_core

    # The machine's speed drifts by several percent over minutes (shared
    # host): model only is measured before and after end to end, and the
    # ratio taken against their mean.
    before = model_only(files)
    end_to_end = index_speed(folder, work / "cnn-idx", "mobilenet", embedder=Embedder(extractor), workers=cores, batch_size=32)
    after = model_only(files[:2048])
    engines.clear()  # their memory, before Ray
    figures = {
        "model_only_before": before[0], "model_only_after": after[0],
        "model_only": (before[0] + after[0]) / 2,
        "model_only_engine_per_core_before": before[1], "model_only_engine_per_core_after": after[1],
        "model_only_engine_per_core": (before[1] + after[1]) / 2,
        "end_to_end_workers_n": end_to_end,
    }
    if ray:
        # A fresh index makes every Ray actor load the network from the index's
        # cached model. Its extractor is built before the clock, like the one
        # above: both runs start from the same point (the network converted).
        steady: dict = {}
        ray_extractor = CNNExtractor(weights=str(MOBILENET_WEIGHTS)).build()
        figures["end_to_end_ray"] = index_speed(
            folder, work / "cnn-idx-ray", "mobilenet", steady, embedder=Embedder(ray_extractor), ray=True, batch_size=32,
        )
        if steady:
            figures["ray_after_first_batch"] = steady["after_first_batch"]
            figures["ray_first_batch_s"] = steady["first_batch_s"]
    return {k: round(v, 1) for k, v in figures.items()} | {"images": len(files)}


class _Results(dict):
    """Figures as they come, echoed to stderr: a run that fails late keeps what it measured."""

    def __setitem__(self, key, value) -> None:
        print(f"{key}: {value}", file=sys.stderr, flush=True)
        super().__setitem__(key, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--cnn-images", type=int, default=None, help="MobileNet on the first N images (default: all)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-cnn", action="store_true")
    parser.add_argument("--no-colour", action="store_true", help="skip the imread, colour and memory figures")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--scale", type=float, default=1.0,
        help="sides of the generated photos times this (4: 1536 x 1024, camera-like files where reduced-size decoding pays)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cores = usable_cores()
    results: dict = _Results(cores=cores, images=args.images, scale=args.scale)
    with tempfile.TemporaryDirectory(prefix="cbir-parallel-") as tmp:
        work = Path(tmp)
        files = make_collection(work / "images", args.images, cores, args.scale)
        colour: dict = {}
        if not args.no_colour:
            imread_loop(files[:200])  # warm the page cache and OpenCV
            results["imread_x1"] = round(imread_loop(files), 1)
            results["imread_pool_xN"] = round(imread_pool(files, cores), 1)
            results["reduced_decode_pool_xN"] = round(imread_pool(files, cores, min_side=ColorHistogram().decode_min_side), 1)
            colour = {}
            for k in sorted({*range(1, cores + 1)} if cores <= 4 else {1, 2, 4, cores // 2, cores}):
                steady = {}
                colour[str(k)] = round(index_speed(work / "images", work / "idx", f"colour-{k}", steady, workers=k), 1)
            results["colour_workers"] = colour
            # The parent commits every image: what more workers cannot take off it.
            results["colour_parent_cpu_ms_per_image"] = steady["parent_cpu_ms_per_image"]
            best = colour[str(cores)]
            results["ratio_colour_workers_n_to_imread_pool"] = round(best / results["imread_pool_xN"], 3)
            results["ratio_colour_workers_n_to_imread_x1"] = round(best / results["imread_x1"], 3)
            results["ratio_reduced_decode_pool_to_imread_pool"] = round(results["reduced_decode_pool_xN"] / results["imread_pool_xN"], 3)
            subset = work / "first-1000"
            subset.mkdir()
            for path in files[:1000]:
                (subset / f"{path.parent.name}-{path.name}").symlink_to(path)
            memory_small = peak_memory(subset, work / "mem", cores)
            memory_all = peak_memory(work / "images", work / "mem", cores)
            results["peak_memory_1000"] = memory_small
            results[f"peak_memory_{len(files)}"] = memory_all
            results["ratio_peak_memory_parent"] = round(memory_all["parent_mib"] / memory_small["parent_mib"], 3)
            results["ratio_peak_memory_worker"] = round(memory_all["largest_worker_mib"] / memory_small["largest_worker_mib"], 3)
            results["dba_growth"] = dba_growth(work / "idx" / f"colour-{cores}", best)
        if not args.no_ray:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            results["ray_start_s"] = round(time.perf_counter() - started, 1)
            if not args.no_colour:
                for run in ("first", "again"):
                    steady: dict = {}
                    speed = round(index_speed(work / "images", work / "idx", f"colour-ray-{run}", steady, ray=True), 1)
                    results[f"colour_ray_{run}"] = speed
                    results[f"colour_ray_{run}_steady"] = steady
                    results[f"ratio_colour_ray_{run}_to_workers_n"] = round(speed / colour[str(cores)], 3)
        if not args.no_cnn:
            cnn = cnn_figures(files[: args.cnn_images or len(files)], work, cores, ray=not args.no_ray)
            results["mobilenet"] = cnn
            results["ratio_mobilenet_end_to_end_to_model_only"] = round(cnn["end_to_end_workers_n"] / cnn["model_only"], 3)
            results["ratio_mobilenet_end_to_end_to_model_only_engine_per_core"] = round(
                cnn["end_to_end_workers_n"] / cnn["model_only_engine_per_core"], 3
            )
            if "end_to_end_ray" in cnn:
                results["ratio_mobilenet_ray_to_workers_n"] = round(cnn["end_to_end_ray"] / cnn["end_to_end_workers_n"], 3)
        if not args.no_ray:
            import ray

            ray.shutdown()
    if args.json or args.no_colour:
        print(json.dumps(results, indent=2))
        return
    size = "" if args.scale == 1 else f", sides x{args.scale:g}"
    print(f"{cores} usable cores, {len(files)} JPEGs (Corel-1k x 8 flips/rotations{size})")
    print(f"  cv2.imread, one thread         {results['imread_x1']:8.1f} images/s")
    print(f"  cv2.imread, {cores} processes       {results['imread_pool_xN']:8.1f} images/s")
    print(f"  cbir's reduced decode, {cores} proc. {results['reduced_decode_pool_xN']:8.1f} images/s"
          f" ({results['ratio_reduced_decode_pool_to_imread_pool']:.2f}x the imread pool: colour's ceiling)")
    for k, speed in colour.items():
        print(f"  colour index --workers {k:<3}     {speed:8.1f} images/s")
    print(f"  colour --workers {cores} / imread pool: {results['ratio_colour_workers_n_to_imread_pool']:.2f}x (target >= 1.0)")
    parent_ms = results["colour_parent_cpu_ms_per_image"]
    print(f"  the indexing process's own CPU: {parent_ms:.3f} ms per image (commits, hand-over, DBA)")
    for run, what in (("first", "first job on the cluster"), ("again", "second job")):
        if f"colour_ray_{run}" not in results:
            continue
        print(f"  colour on Ray ({cores} CPUs), {what:24} {results[f'colour_ray_{run}']:8.1f} images/s"
              f" (cluster start {results['ray_start_s']} s)")
        print(f"    Ray / --workers {cores}: {results[f'ratio_colour_ray_{run}_to_workers_n']:.2f}x (target >= 0.7)")
        steady = results[f"colour_ray_{run}_steady"]
        if steady:
            print(f"    after the first batch {steady['after_first_batch']:8.1f} images/s (first batch after {steady['first_batch_s']} s)")
    if "mobilenet" in results:
        cnn = results["mobilenet"]
        print(f"  MobileNet model only, one engine     {cnn['model_only']:8.1f} images/s ({cnn['images']} images;"
              f" {cnn['model_only_before']} before end to end, {cnn['model_only_after']} after)")
        print(f"  MobileNet model only, engine per core {cnn['model_only_engine_per_core']:7.1f} images/s"
              f" ({cnn['model_only_engine_per_core_before']} before, {cnn['model_only_engine_per_core_after']} after)")
        print(f"  MobileNet end to end           {cnn['end_to_end_workers_n']:8.1f} images/s")
        print(f"  end to end / model only: {results['ratio_mobilenet_end_to_end_to_model_only']:.2f}x one engine, "
              f"{results['ratio_mobilenet_end_to_end_to_model_only_engine_per_core']:.2f}x engine per core (target >= 0.9)")
        if "end_to_end_ray" in cnn:
            print(f"  MobileNet on Ray               {cnn['end_to_end_ray']:8.1f} images/s")
            print(f"  Ray / --workers {cores}: {results['ratio_mobilenet_ray_to_workers_n']:.2f}x (target >= 0.85)")
    small, big = results["peak_memory_1000"], results[f"peak_memory_{len(files)}"]
    print(f"  peak memory, 1000 images: parent {small['parent_mib']} MiB, largest worker {small['largest_worker_mib']} MiB")
    print(f"  peak memory, {len(files)} images: parent {big['parent_mib']} MiB, largest worker {big['largest_worker_mib']} MiB")
    print(f"  ratio: parent {results['ratio_peak_memory_parent']:.2f}x, worker {results['ratio_peak_memory_worker']:.2f}x (target <= 1.5)")
    growth = results["dba_growth"]
    timed = ", ".join(f"{n:,} vectors {s} s" for n, s in growth["neighbours_s"].items())
    print(f"  DBA's neighbour search (first build), exact: {timed}")
    timed = ", ".join(f"{n:,} vectors {s} s (recall {growth['approximate_recall'][n]})" for n, s in growth["approximate_s"].items())
    print(f"  approximate (IVF, the default from {approximate_from():,} vectors): {timed}")
    for n in (100_000, 1_000_000):
        guess = growth[f"extrapolated_{n}"]
        print(f"    at {n:,} images: exact (x n squared) ~{guess['dba_s']:,} s, approximate (x n^1.5) ~{guess['approximate_dba_s']:,} s,"
              f" against ~{guess['indexing_s']:,} s to index them at the colour rate above")


def approximate_from() -> int:
    from cbir.ann.approximate import APPROXIMATE_FROM

    return APPROXIMATE_FROM


if __name__ == "__main__":
    main()
