"""Reading and embedding on a Ray cluster, for collections one machine cannot keep up with.

Ray Data streams the file list through ``map_batches`` over a pool of actors;
each actor builds the embedder once from the index's stored config and state
(``model/`` in the index folder) and does what the local path does per file:
read, hash, decode, prepare, then the batched model step. Vectors stream back
to the driver, which stays the only writer of the index: committed batch by
batch exactly as locally, so skipped files are recorded, a killed driver
resumes and the vectors are identical.

Workers open files by the driver's paths, so every node must see the
collection (and the index folder) at the same paths: a shared filesystem.

Ray is an optional extra (``pip install 'cbir[ray]'``), imported only here.
"""

from __future__ import annotations

import dataclasses

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from cbir.errors import UsageError
from cbir.compute.loader import embed_items, files_in
from cbir.compute.work import CODEC_FIELDS, Batch, EmbedderRef, KnownContent, LoadedFile, PrepareSpec, WorkerError, load_and_embed
from cbir.progress import Progress

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'cbir[ray]'"
#: How long to wait for a TCP answer from a cluster address before giving up.
CONNECT_TIMEOUT_S = 5.0
#: Most files per actor call: each call costs Ray scheduling and object-store
#: traffic (2,000 colour images, 2 CPUs: 390 images/s at 256 vs 348 at 64), so
#: calls are as large as this allows while every actor still gets
#: :data:`CALLS_PER_ACTOR` of them (the last calls balance the actors' load).
MAX_RAY_BATCH = 2048
CALLS_PER_ACTOR = 4
#: Calls queued per actor: with 1, an actor idled ~0.17 s between calls (its
#: result back to the driver, the next call sent); a second call already
#: queued hides that (benchmarks/parallel.py on 2 CPUs, Ray / --workers 2:
#: colour 0.60 -> 0.61-0.63x, MobileNet 0.77 -> 0.81-0.83x).
TASKS_IN_FLIGHT = 2


def import_ray():
    """``ray`` with Ray Data, or one :class:`UsageError` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs extra packages of its own)
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed: {EXTRA_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast, with one line, where nothing listens at ``address`` (Ray itself retries for a minute)."""
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise UsageError(f"--ray address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(f"no Ray cluster answers at {address}: {reason.lower()}") from None


@dataclass
class RayRunner:
    """A connected Ray cluster and how many actors to run on it."""

    actors: int
    #: CPU threads each actor's engine may use: the cluster's CPUs shared out (one each locally).
    threads: int = 1

    @classmethod
    def connect(cls, address: str | None = None, actors: int | None = None) -> "RayRunner":
        """Join (or, for ``None``/``"auto"``, find or start) a cluster; an existing ``ray.init`` is reused."""
        ray = import_ray()
        if not ray.is_initialized():
            explicit = address not in (None, "", "auto")
            if explicit:
                _check_reachable(address)
            try:
                ray.init(
                    address=address if explicit else None,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    include_dashboard=False,
                )
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UsageError(f"cannot start or join a Ray cluster at {address or 'auto'}: {message}") from None
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = actors or cpus
        return cls(actors, max(1, cpus // actors))

    def batch_size(self, files: int, batch_size: int) -> int:
        """Files per actor call (see :data:`MAX_RAY_BATCH`), never fewer than ``batch_size``."""
        share = -(-files // (self.actors * CALLS_PER_ACTOR))
        return max(batch_size, min(share, MAX_RAY_BATCH))

    def embed(
        self,
        files: Sequence[Path],
        embedder,
        ref: EmbedderRef | None,
        batch_size: int,
        known_sha256: dict[Path, str],
        known: KnownContent | None,
        progress: Progress | None,
        local: dict | None = None,
        video: dict | None = None,
    ) -> Iterator[Batch]:
        """Yield a :class:`~cbir.compute.work.Batch` as the actors finish batches (a video's frames in one).

        With ``ref`` each actor builds the embedder from it (the runtime
        engine, as worker processes do) and hands back vectors; without, the
        actors read, decode and prepare, and ``embedder`` runs here.
        """
        if not files:
            return
        ray = import_ray()
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.verbose_stats_logs = False
        spec = PrepareSpec.for_embedder(embedder, ref) if ref is not None else PrepareSpec.for_extractor(embedder.extractor)
        spec = dataclasses.replace(spec, local=local, video=video)
        items = [{"path": str(p), "known": known_sha256.get(p, "")} for p in files]
        # One input block per actor call, so that no call is split into a large and a small one.
        calls = -(-len(items) // self.batch_size(len(items), batch_size))
        dataset = ray.data.from_items(items, override_num_blocks=calls).map_batches(
            _RayWorker,
            fn_constructor_kwargs={"spec": spec, "known": known.for_workers() if known is not None else None},
            compute=ActorPoolStrategy(size=self.actors, max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT),
            batch_size=None,
            batch_format="numpy",
            num_cpus=1,
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                ok, items_out, without = _unpack(batch)
                if progress is not None:
                    progress.advance(files_in(ok, without))
                yield Batch(ok, embed_items(embedder, items_out, embedded=ref is not None), without)
        except ray.exceptions.RayTaskError:
            raise  # an exception inside the embedder: a bug to see, not to hide
        except ray.exceptions.RayError as exc:
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise WorkerError(f"the Ray cluster failed: {message}; work committed so far is kept") from None


def _unpack(batch: dict[str, np.ndarray]) -> tuple[list[LoadedFile], list[np.ndarray], list[LoadedFile]]:
    """``(files with an item, their items, files without)`` of one actor call's columns."""
    ok, items, without = [], [], []
    columns = [batch[name] for name in CODEC_FIELDS]
    for i, path in enumerate(batch["path"]):
        # Ray's columns hold NumPy scalars, and "" for no error.
        loaded = LoadedFile.from_fields(Path(path), [_plain(column[i]) for column in columns])
        loaded.error = loaded.error or None
        features = loaded.local_features
        if isinstance(features, str):  # Arrow may hand binary back as text
            features = features.encode("utf-8", "surrogateescape")
        loaded.local_features = bytes(features) if features else None
        unread = not loaded.sha256  # the worker could not even read the bytes
        if loaded.error is not None and unread and os.access(path, os.R_OK):
            loaded.error += f" (on Ray node {batch['node'][i]}; every node must read the files at the same paths)"
        if batch["has_item"][i]:
            ok.append(loaded)
            items.append(batch["item"][i])
        else:
            without.append(loaded)
    return ok, items, without


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class _RayWorker:
    """One Ray actor: what it runs built once (prepare, and the engine where it embeds), then a batch of paths per call."""

    def __init__(self, spec: PrepareSpec, known: KnownContent | None):
        import ray

        self.embedder = spec.build_embedder()
        self.prepare = self.embedder.prepare if self.embedder is not None else spec.build()
        self.min_side = spec.min_side
        self.local = spec.build_local()
        self.video = spec.build_video()
        self.known = known
        self.node = ray.util.get_node_ip_address()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = load_and_embed(
            [Path(str(path)) for path in batch["path"]],
            [str(known) or None for known in batch["known"]],
            self.min_side,
            self.prepare,
            self.embedder.transform_prepared if self.embedder is not None else None,
            self.known,
            self.local,
            self.video,
        )
        loaded_files = [loaded for loaded, _ in pairs]
        has_item = np.array([item is not None for _, item in pairs], dtype=bool)
        columns: dict[str, np.ndarray] = {"path": np.array([str(f.path) for f in loaded_files], dtype=object)}
        for name, values in zip(CODEC_FIELDS, zip(*(f.fields() for f in loaded_files))):
            empty = b"" if name == "local_features" else ""  # one type a column: Arrow turns mixed columns into text
            columns[name] = np.array([v if v is not None else empty for v in values], dtype=object)
        found = [item for _, item in pairs if item is not None]
        if found:
            stacked = np.stack(found)
            item_column = np.zeros((len(pairs), *stacked.shape[1:]), dtype=stacked.dtype)
            item_column[has_item] = stacked
        else:
            item_column = np.zeros((len(pairs), 1), dtype=np.float32)
        columns.update(has_item=has_item, item=item_column, node=np.array([self.node] * len(pairs), dtype=object))
        return columns
