"""The one loader: files -> read, hashed, decoded and prepared images, in order, with bounded memory.

Everything that turns image files into what an extractor's batched step
takes goes through :func:`load_prepared`: the indexer, folder queries, and
the training data of learning extractors. Per-file work (read, content hash,
decode at reduced size, the extractor's ``prepare``) runs

* in the calling thread (``workers=1``),
* in a thread pool (``processes=False``; OpenCV releases the GIL while it
  decodes, but the per-image Python/NumPy work does not), or
* in worker processes (``processes=True``, :mod:`cbir.compute.processes`), which
  use every core. Workers build the extractor from its config, never
  TensorFlow; where the indexer gives them the embedder's saved state
  (:meth:`Loader.embed_batches`) they run the batched step too and hand
  back vectors.

About ``lookahead`` files plus a few chunks per worker are in flight, so
memory depends on ``workers x chunk``, never on the number of files.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from cbir.compute.work import MIN_FILES_FOR_PROCESSES, Batch, EmbedderRef, KnownContent, PrepareSpec, load_entries
from cbir.compute.work import LoadedFile
from cbir.images.video import is_video_path

logger = logging.getLogger(__name__)


# -- what a worker does to one file --------------------------------------------


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
    """Yield ``(loaded file, prepared item or None)`` for every file, in input order (a video: one per frame).

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
        from cbir.compute.processes import in_processes

        yield from in_processes(files, spec, workers, known_sha256, known, lookahead)
        return
    prepare = prepare if prepare is not None else spec.build()
    local = spec.build_local()
    video = spec.build_video()

    def work(path: Path) -> list[tuple[LoadedFile, Any]]:
        return load_entries(path, spec.min_side, prepare, known_sha256.get(path), known, local, video)

    if workers <= 1:
        for path in files:
            yield from work(path)
        return
    in_flight: deque[tuple[bool, Future]] = deque()
    videos = 0  # in flight: each may hand back up to its cap of frames, so fewer of them are
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbir-load") as pool:
        try:
            for path in files:
                is_video = is_video_path(path)
                while in_flight and (len(in_flight) >= lookahead + 4 * workers or (is_video and videos >= 2 * workers)):
                    was_video, future = in_flight.popleft()
                    videos -= was_video
                    yield from future.result()
                in_flight.append((is_video, pool.submit(work, path)))
                videos += is_video
            while in_flight:
                yield from in_flight.popleft()[1].result()
        finally:
            for _, future in in_flight:
                future.cancel()


@dataclass
class Loader:
    """Where an indexing run reads and prepares files: this process, worker processes, or a Ray cluster.

    ``explicit`` says the caller chose ``workers``: then worker processes
    start even for a few files; otherwise fewer than
    :data:`MIN_FILES_FOR_PROCESSES` files are read in this process.
    ``ray`` is a :class:`cbir.compute.ray_cluster.RayRunner` where the run uses Ray.
    """

    workers: int
    explicit: bool
    batch_size: int
    ray: Any = None

    def uses_processes(self, files: int) -> bool:
        return self.workers > 1 and (self.explicit or files >= MIN_FILES_FOR_PROCESSES)

    def embeds_in_workers(self, files: int, embedder) -> bool:
        """Whether :meth:`embed_batches` over ``files`` files runs ``embedder`` in workers or actors (given its state)."""
        return (self.ray is not None or self.uses_processes(files)) and embedder.extractor.embeds_in_workers

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
        local: dict | None = None,
        video: dict | None = None,
    ) -> Iterator[Batch]:
        """Yield a :class:`~cbir.compute.work.Batch` per batch of files, in order (on Ray: as they finish).

        The one way files become vectors, whichever backend runs the work:
        this process (threads), worker processes, or a Ray cluster. The model
        runs here, or, given the folder of the embedder's saved state
        (``state_dir``), in each worker or actor where the extractor allows it
        (a converted network: the runtime engine, no TensorFlow): one engine
        per worker, a share of the cores each, beats one engine on every core
        whose threads the decoding workers preempt (docs/parallel.md).
        ``local`` (a :class:`cbir.features.local.LocalFeatureConfig` as a dict):
        each embedded file's local features too, from the same decoded pixels.
        ``video`` (a :class:`cbir.images.video.FrameSampling` as a dict): which frames
        of each video become entries; a video's frames always share one batch.
        """
        if self.ray is not None:
            ref = None
            if state_dir is not None and embedder.extractor.embeds_in_workers:
                ref = EmbedderRef.for_embedder(embedder, state_dir, copies=1, cores=self.ray.threads)
            yield from self.ray.embed(files, embedder, ref, self.batch_size, known_sha256 or {}, known, progress, local, video)
            return
        in_workers = state_dir is not None and self.embeds_in_workers(len(files), embedder)
        if in_workers:
            spec = PrepareSpec.for_embedder(embedder, EmbedderRef.for_embedder(embedder, state_dir, self.workers))
        else:
            spec = PrepareSpec.for_extractor(embedder.extractor)
        spec = dataclasses.replace(spec, local=local, video=video)

        pairs = self.load(files, spec, embedder.prepare, known_sha256, known)
        for ok, items, not_embedded in batched(pairs, self.batch_size):
            if progress is not None:
                progress.advance(files_in(ok, not_embedded))  # per batch: the writer does no per-file bookkeeping
            yield Batch(ok, embed_items(embedder, items, embedded=in_workers), not_embedded)


    def local_features(self, files: Sequence[Path], min_side: int | None, local: dict | None, progress=None) -> Iterator[list[LoadedFile]]:
        """Files decoded (as the extractor decodes them) for their local features only, a batch at a time, in order.

        What an existing index needs to gain local features: no vectors, no model.
        With ``local=None``, for what they say about themselves only (size, date, camera).
        """
        spec = PrepareSpec(min_side, local=local, images=False)
        for ok, _, without in batched(self.load(files, spec), self.batch_size):
            if progress is not None:
                progress.advance(files_in(ok, without))
            yield ok + without


def embed_items(embedder, items: Sequence[Any], embedded: bool = False) -> np.ndarray:
    """The vectors of a batch's items: stacked where workers embedded them, else the model runs here."""
    if not items:
        return np.zeros((0, embedder.dim), np.float32)
    return np.stack(items) if embedded else embedder.transform_prepared(items)


def files_in(*groups: Sequence[LoadedFile]) -> int:
    """How many files some entries are (a video's frames count once: at its last)."""
    return sum(1 for group in groups for loaded in group if not loaded.more_frames)


def batched(items: Iterable[tuple[LoadedFile, Any]], batch_size: int) -> Iterator[tuple[list[LoadedFile], list[Any], list[LoadedFile]]]:
    """Group loader output into ``(files with an item, their items, files without)``, ``batch_size`` items each.

    Never inside a video: a batch ends after a video's last frame, so its
    frames are committed together (a batch may hold up to a video's frames more).
    """
    ok: list[LoadedFile] = []
    prepared: list[Any] = []
    without: list[LoadedFile] = []
    for loaded, item in items:
        if item is None:
            without.append(loaded)
        else:
            ok.append(loaded)
            prepared.append(item)
        if len(prepared) >= batch_size and not loaded.more_frames:
            yield ok, prepared, without
            ok, prepared, without = [], [], []
    if prepared or without:
        yield ok, prepared, without
