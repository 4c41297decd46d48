"""The one loader: files -> read, hashed, decoded and prepared images, in order, with bounded memory.

Everything that turns image files into what an extractor's batched step
takes goes through :func:`load_prepared`: the indexer, folder queries, and
the training data of learning extractors. Per-file work (read, content hash,
decode at reduced size, the extractor's ``prepare``) runs

* in the calling thread (``workers=1``),
* in a thread pool (``processes=False``; OpenCV releases the GIL while it
  decodes, but the per-image Python/NumPy work does not), or
* in worker processes (``processes=True``, :mod:`cbir.workerpool`), which
  use every core. Workers build the extractor from its config, never
  TensorFlow; where the indexer gives them the embedder's saved state
  (:meth:`Loader.embed_batches`) they run the batched step too and hand
  back vectors.

About ``lookahead`` files plus a few chunks per worker are in flight, so
memory depends on ``workers x chunk``, never on the number of files.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from cbir.errors import CbirError, ImageError, UsageError
from cbir.images import LoadedFile, load_file

logger = logging.getLogger(__name__)

#: Below this many files, starting worker processes costs more than they save.
MIN_FILES_FOR_PROCESSES = 256


class WorkerError(CbirError):
    """A worker process died (killed, out of memory) before returning its files."""


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def _cgroup_cpu_limit() -> int | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period) + 0.5))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return max(1, int(quota / period + 0.5)) if quota > 0 else None
    except (OSError, ValueError):
        return None


def check_workers(workers: int | None) -> int:
    """``workers`` checked (a positive integer), or the usable core count for ``None``."""
    if workers is None:
        return usable_cores()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


# -- what a worker does to one file --------------------------------------------


@dataclass(frozen=True)
class PrepareSpec:
    """How to load one file, in a form a worker process can rebuild: decode size and extractor config.

    ``extractor`` is an extractor config (``{"name", "params"}``); ``None``
    returns the decoded image itself.
    """

    min_side: int | None
    extractor: dict[str, Any] | None = None
    #: ``(embedder config, folder of its saved state, engine threads)`` where
    #: workers embed too (:meth:`for_embedder`); their items are then vectors.
    embedder: tuple[dict[str, Any], str, int] | None = None

    @classmethod
    def for_extractor(cls, extractor) -> "PrepareSpec":
        return cls(extractor.decode_min_side, extractor.get_config())

    @classmethod
    def for_embedder(cls, embedder, state_dir: Path, workers: int) -> "PrepareSpec":
        """Workers prepare and embed, each with its own engine on a share of the cores."""
        threads = max(1, usable_cores() // workers)
        return cls(embedder.decode_min_side, embedder.extractor.get_config(), (embedder.get_config(), str(state_dir), threads))

    def build_embedder(self):
        """The embedder a worker runs, built from the saved state; ``None`` where workers only prepare."""
        if self.embedder is None:
            return None
        from cbir.features import runtimes
        from cbir.features.pipeline import Embedder

        config, state_dir, threads = self.embedder
        runtimes.limit_threads(threads)  # the workers share the cores: no oversubscribed engines
        return Embedder.from_config(config).load_state(Path(state_dir))

    def build(self) -> Callable[[np.ndarray], Any] | None:
        if self.extractor is None:
            return None
        from cbir.features.base import extractor_class

        # Only ``prepare`` runs here: no parameter checks, no model, no TensorFlow.
        return extractor_class(self.extractor["name"])(**self.extractor.get("params", {})).prepare


class KnownContent:
    """Content hashes already in an index, by 64-bit prefix: a file with one need not be decoded.

    Compact (8 bytes per image, plus 8 for its id where the caller needs it)
    so that worker processes can hold it; a prefix match is confirmed
    against the full hash in the catalogue.
    """

    def __init__(self, prefixes: np.ndarray, ids: np.ndarray | None = None):
        self.prefixes = prefixes
        self.ids = ids

    @classmethod
    def from_hashes(cls, pairs: Iterable[tuple[int, str]]) -> "KnownContent":
        """From ``(id, sha256)`` pairs, e.g. :meth:`cbir.catalogue.Catalogue.content_hashes`."""
        ids, prefixes = [], []
        for image_id, sha256 in pairs:
            if sha256:
                ids.append(image_id)
                prefixes.append(_prefix(sha256))
        prefixes_array = np.array(prefixes, dtype=np.uint64)
        order = np.argsort(prefixes_array, kind="stable")
        return cls(prefixes_array[order], np.array(ids, dtype=np.int64)[order])

    def for_workers(self) -> "KnownContent":
        """The prefixes only: what a worker needs to decide not to decode."""
        return KnownContent(self.prefixes)

    def __len__(self) -> int:
        return len(self.prefixes)

    def __contains__(self, sha256: str) -> bool:
        return len(self.candidate_positions(sha256)) > 0

    def candidate_positions(self, sha256: str) -> range:
        if not len(self.prefixes) or not sha256:
            return range(0)
        key = np.uint64(_prefix(sha256))
        return range(int(np.searchsorted(self.prefixes, key)), int(np.searchsorted(self.prefixes, key, side="right")))

    def candidate_ids(self, sha256: str) -> list[int]:
        """Ids of indexed images whose hash starts like ``sha256`` (confirm with the full hash)."""
        if self.ids is None:
            raise RuntimeError("this KnownContent was made for workers and has no ids")
        return [int(self.ids[i]) for i in self.candidate_positions(sha256)]


def _prefix(sha256: str) -> int:
    return int(sha256[:16], 16)


def load_and_embed(
    paths: Sequence[Path],
    known_sha256s: Sequence[str | None],
    min_side: int | None,
    prepare: Callable[[np.ndarray], Any] | None,
    embed: Callable[[Sequence[Any]], np.ndarray] | None,
    known: KnownContent | None,
) -> list[tuple[LoadedFile, Any]]:
    """:func:`load_one` for each file, then ``embed`` (if given) on the prepared items at once: their vectors."""
    loaded = [load_one(path, min_side, prepare, sha, known) for path, sha in zip(paths, known_sha256s)]
    found = [i for i, (_, item) in enumerate(loaded) if item is not None]
    if embed is not None and found:
        vectors = embed([loaded[i][1] for i in found])
        for i, vector in zip(found, vectors):
            loaded[i] = (loaded[i][0], vector)
    return loaded


def load_one(
    path: Path,
    min_side: int | None,
    prepare: Callable[[np.ndarray], Any] | None,
    known_sha256: str | None,
    known: KnownContent | None,
) -> tuple[LoadedFile, Any]:
    loaded = load_file(path, min_side, known_sha256, reusable=known.__contains__ if known else None)
    if loaded.image is None:
        return loaded, None
    if prepare is None:
        return loaded, loaded.image
    image, loaded.image = loaded.image, None
    try:
        return loaded, prepare(image)
    except ImageError as exc:  # an image this extractor cannot use is skipped like a broken file
        loaded.error = f"cannot process: {exc}"
    except Exception as exc:
        import cv2

        if not isinstance(exc, cv2.error):
            raise  # a bug, not a bad image: let it surface
        loaded.error = f"cannot process: {str(exc).strip().splitlines()[-1]}"
    return loaded, None


# -- the loader --------------------------------------------------------------------


def load_prepared(
    files: Sequence[Path],
    spec: PrepareSpec,
    *,
    workers: int = 1,
    processes: bool = False,
    prepare: Callable[[np.ndarray], Any] | None = None,
    known_sha256: dict[Path, str] | None = None,
    known: KnownContent | None = None,
    lookahead: int = 64,
) -> Iterator[tuple[LoadedFile, Any]]:
    """Yield ``(loaded file, prepared item or None)`` for every file, in input order.

    The item is ``None`` when the file could not be read (``loaded.error``
    says why), when its hash equals ``known_sha256[path]`` (``unchanged``),
    or when its hash is in ``known`` (``reusable``); otherwise it is
    ``prepare(image)``, or the decoded image if the spec names no extractor.

    ``prepare`` (threads and in-process only) overrides the spec's extractor
    with an object already built. About ``lookahead`` files plus a few
    chunks per worker are in flight.

    Raises
    ------
    WorkerError
        If a worker process dies; items yielded before it are complete.
    """
    known_sha256 = known_sha256 or {}
    if processes and workers > 1:
        from cbir.workerpool import in_processes

        yield from in_processes(files, spec, workers, known_sha256, known, lookahead)
        return
    prepare = prepare if prepare is not None else spec.build()

    def work(path: Path) -> tuple[LoadedFile, Any]:
        return load_one(path, spec.min_side, prepare, known_sha256.get(path), known)

    if workers <= 1:
        for path in files:
            yield work(path)
        return
    in_flight: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbir-load") as pool:
        try:
            for path in files:
                in_flight.append(pool.submit(work, path))
                if len(in_flight) >= lookahead + 4 * workers:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()


@dataclass
class Loader:
    """Where an indexing run reads and prepares files: this process, worker processes, or a Ray cluster.

    ``explicit`` says the caller chose ``workers``: then worker processes
    start even for a few files; otherwise fewer than
    :data:`MIN_FILES_FOR_PROCESSES` files are read in this process.
    ``ray`` is a :class:`cbir.distributed.RayRunner` where the run uses Ray.
    """

    workers: int
    explicit: bool
    batch_size: int
    ray: Any = None

    def uses_processes(self, files: int) -> bool:
        return self.workers > 1 and (self.explicit or files >= MIN_FILES_FOR_PROCESSES)

    def embeds_in_workers(self, files: int, embedder) -> bool:
        """Whether :meth:`embed_batches` over ``files`` files runs ``embedder`` in worker processes (given its state)."""
        return self.uses_processes(files) and embedder.extractor.embeds_in_workers

    def load(self, files: Sequence[Path], spec: PrepareSpec, prepare=None, known_sha256=None, known=None):
        """:func:`load_prepared` in worker processes where they pay off, else in threads."""
        processes = self.uses_processes(len(files))
        return load_prepared(
            files,
            spec,
            workers=self.workers,
            processes=processes,
            prepare=None if processes else prepare,
            known_sha256=known_sha256,
            known=known.for_workers() if known is not None and processes else known,
            lookahead=self.batch_size,
        )

    def embed_batches(
        self,
        files: Sequence[Path],
        embedder,
        known_sha256: dict[Path, str] | None = None,
        known: KnownContent | None = None,
        progress=None,
        state_dir: Path | None = None,
    ) -> Iterator[tuple[list[LoadedFile], np.ndarray, list[LoadedFile]]]:
        """Yield ``(embedded files, their vectors, files not embedded)`` per batch, in order.

        The model runs here, or, given the folder of the embedder's saved
        state (``state_dir``), in each worker process where there are
        workers and the extractor allows it: a network run as one engine per
        worker, a share of the cores each, beats one engine on every core
        whose threads the decoding workers preempt (docs/parallel.md).
        """
        in_workers = state_dir is not None and self.embeds_in_workers(len(files), embedder)
        if in_workers:
            spec = PrepareSpec.for_embedder(embedder, state_dir, self.workers)
        else:
            spec = PrepareSpec.for_extractor(embedder.extractor)

        def counted():
            for pair in self.load(files, spec, embedder.prepare, known_sha256, known):
                if progress is not None:
                    progress.advance()
                yield pair

        for ok, items, not_embedded in batched(counted(), self.batch_size):
            if not items:
                vectors = np.zeros((0, embedder.dim), np.float32)
            else:
                vectors = np.stack(items) if in_workers else embedder.transform_prepared(items)
            yield ok, vectors, not_embedded


def batched(items: Iterable[tuple[LoadedFile, Any]], batch_size: int) -> Iterator[tuple[list[LoadedFile], list[Any], list[LoadedFile]]]:
    """Group loader output into ``(files with an item, their items, files without)``, ``batch_size`` items each."""
    ok: list[LoadedFile] = []
    prepared: list[Any] = []
    without: list[LoadedFile] = []
    for loaded, item in items:
        if item is None:
            without.append(loaded)
        else:
            ok.append(loaded)
            prepared.append(item)
        if len(prepared) >= batch_size:
            yield ok, prepared, without
            ok, prepared, without = [], [], []
    if prepared or without:
        yield ok, prepared, without
