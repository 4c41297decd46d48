"""Folder -> decoded images -> vectors -> catalogue and FAISS index, incrementally.

:func:`index_folder` is the one entry point. It walks the folder, compares
what it finds with the catalogue (mark and sweep: new, changed, unchanged,
gone), embeds only what is new or changed, and commits every batch of
vectors together with its catalogue rows, so a run that is interrupted or
killed keeps all committed work and the next run carries on from there.

Reading, hashing, decoding and embedding go through the one loader
(:mod:`cbir.compute.loader`): in worker processes on every usable core (each with
its own copy of the network, or the network here for the Keras runtime), or
on a Ray cluster (:mod:`cbir.compute.ray_cluster`); every write stays in this
process, through the index's one writer (:mod:`cbir.store.writer`). Memory stays
bounded however large the folder.

At ~470 lines it is a little over the usual size: the plan (mark and sweep),
the commit loop and the reuse of stored vectors are the steps of one run.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cbir.store import dba as dba_store
from cbir.store.catalogue import NewImage
from cbir.errors import CbirError, ConfigMismatchError, NoImagesError, UsageError
from cbir.features.pipeline import Embedder, EmbedderOptions
from cbir.compute.work import LoadedFile
from cbir.images.scan import normalize_path, scan_folder
from cbir.images.labels import as_label_table, assign_labels, folder_label
from cbir.indexing.fit import Batch, fit_new_embedder
from cbir.compute.work import KnownContent, PrepareSpec, check_workers
from cbir.compute.loader import Loader, load_prepared
from cbir.indexing.maintenance import without_removed
from cbir.progress import SILENT, Progress
from cbir.store.directory import IndexStore, is_index
from cbir.store.manifest import read_manifest
from cbir.store.locations import index_path, name_for_folder
from cbir.store.writer import IndexWriter, Restat, SkippedFile, open_writer
from cbir.ann.rerank import DEFAULT_ALPHA
from cbir.ann.vectors import resolve_index_type

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64

#: At most this many images are decoded to fit a learning extractor or a PCA.
DEFAULT_FIT_SAMPLE = 20_000


@dataclass
class IndexSummary:
    """What one indexing run did."""

    name: str
    path: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    total: int = 0
    seconds: float = 0.0
    embedded: int = 0
    #: Files whose content the index already held (moved or copied): their stored vector was reused.
    reused: int = 0
    created: bool = False
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    #: Image files of formats cbir cannot read (HEIC, RAW...), by suffix; not indexed.
    unsupported: dict[str, int] = field(default_factory=dict)
    #: How the FAISS index was rebuilt from the stored vectors this run (nothing re-embedded), if it was.
    vectors_rebuilt: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "created": self.created,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "reused": self.reused,
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped_files],
            "unsupported": dict(self.unsupported),
            "vectors_rebuilt": self.vectors_rebuilt,
        }


def index_folder(
    folder: str | os.PathLike,
    name: str | None = None,
    index_dir: str | os.PathLike | None = None,
    *,
    embedder: Embedder | None = None,
    options: EmbedderOptions | Mapping[str, Any] | None = None,
    index_type: str | None = None,
    labels: Mapping[str, str] | str | os.PathLike | None = None,
    pca_train_folder: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    ray: str | bool | None = None,
    fit_sample: int = DEFAULT_FIT_SAMPLE,
    wait: bool = False,
    progress: Progress = SILENT,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    include_removed: bool = False,
    dba: int | None | str = dba_store.KEEP,
    dba_alpha: float = DEFAULT_ALPHA,
) -> IndexSummary:
    """Create or update the index ``name`` with the images under ``folder``.

    Parameters
    ----------
    folder : path
        Searched recursively for images. On an existing index, rows under this
        folder whose files are gone are removed; rows elsewhere are kept.
    name, index_dir : str, path
        The index lives in ``index_dir / name`` (default folder: :func:`cbir.store.directory.resolve_index_dir`);
        ``name`` defaults to the folder's name (see :func:`cbir.store.directory.name_for_folder`).
    embedder : Embedder, optional
        Extractor (+ PCA) for a new index; default: colour histograms. On an
        existing index it must embed as the index's own config does, or be ``None``.
    options : EmbedderOptions or mapping, optional
        Instead of ``embedder``: only what to change, as the CLI's options do
        (e.g. ``{"backbone": "resnet50", "pca": 64}`` for a new index, or
        ``{"runtime": "tflite"}`` on an existing one, which keeps the rest of
        its config). See :class:`~cbir.features.pipeline.EmbedderOptions`.
    index_type : str, optional
        ``flat`` (the default for new indexes), ``hnsw``, ``ivf``, ``ivfpq`` or
        a FAISS factory string. Changing it on an existing index rebuilds only
        the FAISS index from the stored vectors; nothing is re-embedded.
    labels : mapping or path, optional
        ``{path: label}``, or a labels CSV (see :func:`cbir.images.labels.read_labels_csv`),
        stored with the images; by default an image's label is its folder name.
    pca_train_folder : path, optional
        Fit the PCA on these images instead of on the collection.
    batch_size : int
        Images per commit, and per model call where this process runs the
        network (workers embed their chunks of 16 files).
    workers : int, optional
        Worker processes that read, decode and prepare images (default: the
        usable cores; small folders are then read in this process, where
        starting workers would cost more than they save). Workers embed too,
        each with its own engine on a share of the cores (the Keras runtime
        runs here); this process stays the only writer.
    ray : bool or str, optional
        Read and embed on a Ray cluster instead: ``True`` or ``"auto"``
        (``ray.init()``: an existing local cluster, else a new one), or an
        address (``host:port``, ``ray://host:port``). Workers read the files
        by the same paths: they must be on a filesystem every node shares.
    fit_sample : int
        At most this many images are used to fit a learning extractor or PCA.
    wait : bool
        Wait for another writer (a first build included) to finish instead of failing.
    progress : Progress
        Receives progress events.
    exclude, include_hidden : sequence of str, bool
        Glob patterns of files and folders to leave out, and whether to walk
        hidden ones (see :func:`cbir.images.decode.scan_folder`). Rows of files left
        out are dropped like those of deleted files.
    include_removed : bool
        Add back files under ``folder`` that ``cbir remove`` took out (they
        are otherwise left out; indexing a removed folder itself adds it back).
    dba, dba_alpha : int or None, float
        Database-side augmentation with this many neighbours (``None``: off;
        default: :data:`cbir.ann.rerank.DEFAULT_DBA` for a new index, unchanged
        for an existing one), see :mod:`cbir.store.dba`.

    Raises
    ------
    UsageError, NoImagesError, ConfigMismatchError, IndexLockedError, IndexCorruptError
    WorkerError
        If a worker process dies; everything committed before is kept.
    KeyboardInterrupt
        After committing everything embedded so far; run again to continue.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    loader = Loader(check_workers(workers), explicit=workers is not None, batch_size=batch_size)
    folder = normalize_path(folder)
    if name is None:
        name = name_for_folder(folder)
    scan = scan_folder(folder, exclude=exclude, include_hidden=include_hidden)
    files = scan.images
    if not files:
        raise NoImagesError(f"no image files under {folder}{_unsupported_note(scan.unsupported)}")
    labels = _labels_for(files, labels)
    path = index_path(name, index_dir)
    if options is not None:
        if embedder is not None:
            raise UsageError("give either an embedder or options, not both")
        if not isinstance(options, EmbedderOptions):
            options = EmbedderOptions.from_mapping(options)
        embedder = options.resolve(_stored_embedder_config(path))
    if ray not in (None, False):
        from cbir.compute.ray_cluster import RayRunner

        # Before anything is written: an unreachable cluster leaves no trace.
        loader.ray = RayRunner.connect(None if ray is True else ray, actors=workers)

    with open_writer(path, wait=wait, progress=progress) as writer:
        summary = IndexSummary(name=name, path=str(path), created=writer.created, unsupported=scan.unsupported)
        precomputed: list[Batch] = []
        if writer.created:
            embedder = _new_embedder(embedder)
            if index_type is not None:
                _check_index_type(index_type, embedder, len(files))
            precomputed = fit_new_embedder(embedder, files, writer.training_dir, pca_train_folder, loader, fit_sample, progress)
            writer.create(embedder, index_type or "flat", len(files))
        else:
            runtime_overrides = _check_same_config(writer.store, embedder)
            if index_type is not None:
                resolve_index_type(index_type, writer.store.dim, len(files))  # a bad type fails before any embedding
            if runtime_overrides:
                writer.store.embedder(runtime_overrides)
            files = without_removed(writer, folder, files, include_removed)
        writer.store.record_indexed_root(str(folder))  # what a server may serve files from
        dba_store.configure(writer.store, dba, dba_alpha, writer.created, len(files))
        plan = _plan(writer, folder, files)
        summary.unchanged, summary.skipped = plan.unchanged, plan.still_skipped
        _embed_and_commit(writer, plan, precomputed, labels, loader, summary, progress)
        if plan.removed_ids or plan.removed_skipped:
            summary.removed = writer.remove(plan.removed_ids, plan.removed_skipped)
        if labels is not None:
            writer.set_labels({str(p): label for p, label in labels.items()})
        summary.total = writer.catalogue.count_images()
        if writer.created and summary.total == 0:
            raise NoImagesError(_nothing_readable_message(folder, summary.skipped_files))
        if not writer.created and index_type is not None:
            writer.change_index_type(index_type)
    summary.vectors_rebuilt = writer.vectors_rebuilt
    summary.seconds = time.perf_counter() - started
    return summary


def _check_index_type(index_type: str, embedder: Embedder, n_files: int) -> None:
    """Refuse an index type FAISS cannot build before any training."""
    try:
        dim = embedder.dim
    except Exception:  # some extractors know their dimension only once built
        return
    resolve_index_type(index_type, dim, n_files)


def _unsupported_note(unsupported: dict[str, int]) -> str:
    if not unsupported:
        return ""
    return " (files of formats cbir cannot read: " + ", ".join(f"{n} {ext}" for ext, n in unsupported.items()) + ")"


def _labels_for(files: Sequence[Path], labels) -> dict[Path, str] | None:
    if labels is None:
        return None
    assigned = assign_labels(as_label_table(labels), [str(p) for p in files])
    return {p: label for p, label in zip(files, assigned)}


def _new_embedder(embedder: Embedder | None) -> Embedder:
    if embedder is None:
        from cbir.features.base import make_extractor

        embedder = Embedder(make_extractor("color"))
    embedder.extractor.check_params()
    if embedder.pca is not None:
        embedder.pca.check_params()
    return embedder


def _stored_embedder_config(path: Path) -> dict[str, Any] | None:
    """An existing index's embedder config, or ``None`` for a new (or unreadable) index."""
    if not is_index(path):
        return None
    try:
        return read_manifest(path)["embedder"]
    except CbirError:
        return None  # opening the index reports the damage


def _check_same_config(store: IndexStore, embedder: Embedder | None) -> dict[str, Any]:
    """Refuse a config that would embed differently; return runtime-only parameters that differ."""
    if embedder is None:
        return {}
    built = store.manifest["embedder"]
    differences = embedder.differences(built)
    if differences:
        listed = ", ".join(f"{key} {stored!r} (asked: {asked!r})" for key, (stored, asked) in differences.items())
        raise ConfigMismatchError(
            f"index {store.name!r} was built with other options: {listed}; "
            f"leave them out to update it, or choose another --name"
        )
    return embedder.runtime_overrides(built)


@dataclass
class _Plan:
    """Files to embed, with the content hash each may still match."""

    todo: list[Path]
    known_sha256: dict[Path, str]
    unchanged: int
    still_skipped: int
    removed_ids: list[int]
    removed_skipped: list[str]
    #: Content already in the index (``None`` for a new one): such files reuse its vector.
    known: KnownContent | None = None


def _plan(writer: IndexWriter, folder: Path, files: list[Path]) -> _Plan:
    """Mark and sweep: compare the folder with the catalogue rows under it."""
    catalogue = writer.catalogue
    rows = catalogue.images_under(str(folder))
    skipped = catalogue.skipped_under(str(folder))
    todo, known, unchanged, still_skipped = [], {}, 0, 0
    present = set()
    for file in files:
        key = str(file)
        present.add(key)
        try:
            stat = file.stat()
        except OSError:
            todo.append(file)  # let the loader record why it cannot be read
            continue
        row = rows.get(key)
        if row is not None:
            if row.size == stat.st_size and row.mtime_ns == stat.st_mtime_ns:
                unchanged += 1
            else:
                todo.append(file)
                known[file] = row.sha256  # confirm the change by content before re-embedding
            continue
        previous = skipped.get(key)
        if previous is not None and previous[:2] == (stat.st_size, stat.st_mtime_ns):
            still_skipped += 1
            continue
        todo.append(file)
    removed_ids = [row.id for key, row in rows.items() if key not in present]
    removed_skipped = [key for key in skipped if key not in present]
    content = None
    if todo and not writer.created:
        content = KnownContent.from_hashes(catalogue.content_hashes())
    return _Plan(todo, known, unchanged, still_skipped, removed_ids, removed_skipped, content)


def _embed_and_commit(
    writer: IndexWriter,
    plan: _Plan,
    precomputed: list[Batch],
    labels: dict[Path, str] | None,
    loader: Loader,
    summary: IndexSummary,
    progress: Progress,
) -> None:
    if not plan.todo:
        return
    store = writer.store
    embedder = store.embedder()
    done = {loaded.path for ok, _, failed in precomputed for loaded in ok + failed}
    remaining = [path for path in plan.todo if path not in done]
    progress.start(f"indexing into {store.name!r}", len(plan.todo))
    progress.advance(len(plan.todo) - len(remaining))
    if loader.ray is not None:
        fresh = loader.ray.embed(remaining, store, loader.batch_size, plan.known_sha256, plan.known, progress)
    else:
        fresh = loader.embed_batches(remaining, embedder, plan.known_sha256, plan.known, progress, state_dir=store.model_dir)
    try:
        for ok, vectors, not_embedded in itertools.chain(precomputed, fresh):
            ok, vectors, not_embedded, reused = _reuse_vectors(writer, embedder, plan.known, ok, vectors, not_embedded)
            writer.add(
                [
                    NewImage(
                        path=str(loaded.path),
                        size=loaded.size,
                        mtime_ns=loaded.mtime_ns,
                        sha256=loaded.sha256,
                        label=labels.get(loaded.path) if labels is not None else folder_label(loaded.path),
                        vector=vector,
                    )
                    for loaded, vector in zip(ok, vectors)
                ],
                skipped=[
                    SkippedFile(str(f.path), f.size, f.mtime_ns, f.error or "unreadable")
                    for f in not_embedded
                    if not f.unchanged
                ],
                restat=[Restat(str(f.path), f.size, f.mtime_ns) for f in not_embedded if f.unchanged],
            )
            for loaded in ok:
                if loaded.path in plan.known_sha256:
                    summary.updated += 1
                else:
                    summary.added += 1
            for loaded in not_embedded:
                if loaded.unchanged:
                    summary.unchanged += 1
                else:
                    summary.skipped += 1
                    summary.skipped_files.append((str(loaded.path), loaded.error or "unreadable"))
                    logger.warning("skipped %s: %s", loaded.path, loaded.error)
            summary.embedded += len(ok) - reused
            summary.reused += reused
    finally:
        progress.stop()


def _reuse_vectors(
    writer: IndexWriter, embedder: Embedder, known: KnownContent | None, ok: list, vectors: np.ndarray, not_embedded: list
) -> tuple[list[LoadedFile], np.ndarray, list[LoadedFile], int]:
    """Give files whose content the index already holds that content's stored vector (no decoding, no model)."""
    reusable = [f for f in not_embedded if f.reusable]
    if not reusable:
        return ok, vectors, not_embedded, 0
    catalogue = writer.catalogue
    candidates = sorted({i for f in reusable for i in known.candidate_ids(f.sha256)})
    by_hash = {row.sha256: row.id for row in catalogue.image_rows(candidates)}
    found = [f for f in reusable if f.sha256 in by_hash]
    stored = catalogue.vectors_for_ids([by_hash[f.sha256] for f in found], writer.store.dim)
    extra_ok, extra_vectors = list(found), [stored]
    rest = [f for f in not_embedded if not f.reusable]
    # A 64-bit prefix that matched another hash: rare; read the file here.
    for file in (f for f in reusable if f.sha256 not in by_hash):
        for loaded, item in load_prepared([file.path], PrepareSpec(embedder.decode_min_side), prepare=embedder.prepare):
            if item is None:
                rest.append(loaded)
            else:
                extra_ok.append(loaded)
                extra_vectors.append(embedder.transform_prepared([item]))
    all_vectors = np.concatenate([vectors.reshape(-1, writer.store.dim), *extra_vectors])
    return ok + extra_ok, all_vectors, rest, len(found)


def _nothing_readable_message(folder: Path, skipped: list[tuple[str, str]]) -> str:
    example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return f"none of the image files under {folder} could be read{example}"


def remove_paths(
    paths: Sequence[str | os.PathLike],
    name: str,
    index_dir: str | os.PathLike | None = None,
    wait: bool = False,
    progress: Progress = SILENT,
) -> int:
    """Remove images from the index ``name``; a folder removes everything indexed under it.

    All or nothing: if any path matches nothing in the index, nothing is
    removed and :class:`~cbir.errors.UsageError` names it. Returns the number
    of images removed. ``progress`` follows the snapshot's update (DBA's
    neighbours of the images that lost one).
    """
    with open_writer(index_path(name, index_dir), wait=wait, create=False, progress=progress) as writer:
        ids: set[int] = set()
        skipped_paths: list[str] = []
        for raw in paths:
            key = str(normalize_path(raw))
            rows = writer.catalogue.images_under(key)
            skipped = writer.catalogue.skipped_under(key)
            if not rows and not skipped:
                raise UsageError(f"not in index {name!r}: {key}")
            ids.update(row.id for row in rows.values())
            skipped_paths.extend(skipped)
        # Remembered, so that indexing a folder above them does not bring them back.
        remembered = [*writer.store.removed_paths(), *(str(normalize_path(p)) for p in paths)]
        return writer.remove(sorted(ids), skipped_paths, removed_paths=remembered)
