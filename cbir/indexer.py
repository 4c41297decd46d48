"""Folder -> decoded images -> vectors -> catalogue and FAISS index, incrementally.

:func:`index_folder` is the one entry point. It walks the folder, compares
what it finds with the catalogue (mark and sweep: new, changed, unchanged,
gone), embeds only what is new or changed, and commits every batch of
vectors together with its catalogue rows, so a run that is interrupted or
killed keeps all committed work and the next run carries on from there.

Decoding and per-image preparation run in a thread pool that keeps a bounded
number of files in flight, overlapping the batched model work on the main
thread; memory stays bounded however large the folder.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from cbir.catalogue import NewImage
from cbir.errors import CbirError, ConfigMismatchError, NoImagesError, UsageError
from cbir.features.pipeline import Embedder, EmbedderOptions
from cbir.images import LoadedFile, find_images, load_file, normalize_path, scan_folder
from cbir.labels import as_label_table, assign_labels, folder_label
from cbir.progress import SILENT, Progress
from cbir.store import (
    CATALOGUE_FILE,
    MODEL_DIR,
    IndexStore,
    WriteLock,
    index_path,
    is_index,
    is_under,
    name_for_folder,
    read_manifest,
)
from cbir.vectors import resolve_index_type

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
#: Inside a new index: checkpoints of a training extractor, kept if training is interrupted.
TRAINING_DIR = "training"

#: ``(embedded files, their vectors, files not embedded)``: what one committed batch holds.
_Batch = tuple[list[LoadedFile], np.ndarray, list[LoadedFile]]
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
    created: bool = False
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    #: How the FAISS index was rebuilt from the stored vectors this run (nothing re-embedded), if it was.
    vectors_rebuilt: str | None = None
    #: Image files of formats cbir cannot read (HEIC, RAW...), by suffix; not indexed.
    unsupported: dict[str, int] = field(default_factory=dict)

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
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped_files],
            "vectors_rebuilt": self.vectors_rebuilt,
            "unsupported": dict(self.unsupported),
        }


@dataclass
class _Plan:
    """Files to embed, with the content hash each may still match."""

    todo: list[Path]
    known_sha256: dict[Path, str]
    unchanged: int
    still_skipped: int
    removed_ids: list[int]
    removed_skipped: list[str]


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
    fit_sample: int = DEFAULT_FIT_SAMPLE,
    wait: bool = False,
    progress: Progress = SILENT,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    include_removed: bool = False,
) -> IndexSummary:
    """Create or update the index ``name`` with the images under ``folder``.

    Parameters
    ----------
    folder : path
        Searched recursively for images. On an existing index, rows under this
        folder whose files are gone are removed; rows elsewhere are kept.
    name, index_dir : str, path
        The index lives in ``index_dir / name`` (default folder: :func:`cbir.store.resolve_index_dir`);
        ``name`` defaults to the folder's name (see :func:`cbir.store.name_for_folder`).
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
        ``{path: label}``, or a labels CSV (see :func:`cbir.labels.read_labels_csv`),
        stored with the images; by default an image's label is its folder name.
    pca_train_folder : path, optional
        Fit the PCA on these images instead of on the collection.
    batch_size, workers : int
        Images per model call; decoding threads (default: CPU count).
    fit_sample : int
        At most this many images are used to fit a learning extractor or PCA.
    wait : bool
        Wait for another writer to finish instead of failing.
    progress : Progress
        Receives progress events.
    exclude, include_hidden : sequence of str, bool
        Glob patterns of files and folders to leave out, and whether to walk
        hidden ones (see :func:`cbir.images.scan_folder`). Rows of files left
        out are dropped like those of deleted files.
    include_removed : bool
        Add back files under ``folder`` that ``cbir remove`` took out (they
        are otherwise left out; indexing a removed folder itself adds it back).

    Raises
    ------
    UsageError, NoImagesError, ConfigMismatchError, IndexLockedError, IndexCorruptError
    KeyboardInterrupt
        After committing everything embedded so far; run again to continue.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
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
    _check_writable(path)
    workers = workers or os.cpu_count() or 1
    if index_type is not None and not is_index(path):
        _check_index_type(index_type, embedder, len(files))

    created = not is_index(path)
    precomputed: list[_Batch] = []
    if created:
        store, precomputed = _create_index(
            path, files, embedder, index_type or "flat", pca_train_folder, batch_size, workers, fit_sample, progress
        )
    else:
        store = IndexStore.open(path, writable=True, wait=wait)
        try:
            runtime_overrides = _check_same_config(store, embedder)
            if index_type is not None:
                resolve_index_type(index_type, store.dim, len(files))  # a bad type fails before any embedding
            if runtime_overrides:
                store.embedder(runtime_overrides)
            files = _without_removed(store, folder, files, include_removed)
        except BaseException:
            store.close()
            raise

    summary = IndexSummary(name=name, path=str(path), created=created, unsupported=scan.unsupported)
    try:
        plan = _plan(store, folder, files)
        summary.unchanged, summary.skipped = plan.unchanged, plan.still_skipped
        try:
            _embed_and_commit(store, plan, precomputed, labels, batch_size, workers, summary, progress)
        except KeyboardInterrupt:
            store.save_vectors()
            raise
        if plan.removed_ids or plan.removed_skipped:
            with store.catalogue.transaction():
                summary.removed = store.catalogue.remove_ids(plan.removed_ids)
                store.catalogue.remove_skipped(plan.removed_skipped)
        if labels is not None:
            with store.catalogue.transaction():
                store.catalogue.set_labels({str(p): label for p, label in labels.items()})
        summary.total = store.catalogue.count_images()
        if created and summary.total == 0:
            raise NoImagesError(_nothing_readable_message(folder, summary.skipped_files))
        if not created and index_type is not None and (
            index_type != store.manifest.get("index_type") or not store.factory_is_buildable()
        ):
            factory, search_params = resolve_index_type(index_type, store.dim, summary.total)
            store.change_index_type(index_type, factory, search_params)
        summary.vectors_rebuilt = store.save_vectors()
    except BaseException:
        # Nothing committed and nothing learned: leave no half-made index. A
        # trained model or fitted PCA is kept, and the next run resumes from it.
        if created and store.catalogue.count_images() == 0 and not _learns(store.embedder()):
            store.close()
            shutil.rmtree(path, ignore_errors=True)  # nothing worth keeping: leave no half-made index
        else:
            store.close()
        raise
    store.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _check_index_type(index_type: str, embedder: Embedder | None, n_files: int) -> None:
    """Refuse an index type FAISS cannot build before any training or embedding."""
    if embedder is None:
        from cbir.features.base import make_extractor

        embedder = Embedder(make_extractor("color"))
    try:
        dim = embedder.dim
    except Exception:  # some extractors know their dimension only once built
        return
    resolve_index_type(index_type, dim, n_files)


def _learns(embedder: Embedder) -> bool:
    return embedder.extractor.requires_fit or embedder.pca is not None


def _without_removed(store: IndexStore, folder: Path, files: list[Path], include_removed: bool) -> list[Path]:
    """Leave out what ``cbir remove`` took out below ``folder``; forget removals the run asks back."""
    removed = store.removed_paths()
    if not removed:
        return files
    root = str(folder)
    # Indexing a removed folder (or one inside it) by name asks for it back.
    asked_back = [p for p in removed if is_under(root, p) or (include_removed and is_under(p, root))]
    if asked_back:
        with store.catalogue.transaction():
            store.set_removed_paths([p for p in removed if p not in asked_back])
    honoured = [p for p in removed if p not in asked_back]
    if not honoured:
        return files
    kept = [f for f in files if not any(is_under(str(f), p) for p in honoured)]
    if len(kept) < len(files):
        logger.info("left out %d file(s) removed earlier with cbir remove", len(files) - len(kept))
    return kept


def _unsupported_note(unsupported: dict[str, int]) -> str:
    if not unsupported:
        return ""
    return " (files of formats cbir cannot read: " + ", ".join(f"{n} {ext}" for ext, n in unsupported.items()) + ")"


def _labels_for(files: Sequence[Path], labels) -> dict[Path, str] | None:
    if labels is None:
        return None
    assigned = assign_labels(as_label_table(labels), [str(p) for p in files])
    return {p: label for p, label in zip(files, assigned)}


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create an index under {probe}: it is not a folder (choose another --index-dir)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {probe}: permission denied (choose another --index-dir)")


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


def _create_index(
    path: Path,
    files: list[Path],
    embedder: Embedder | None,
    index_type: str,
    pca_train_folder,
    batch_size: int,
    workers: int,
    fit_sample: int,
    progress: Progress,
) -> tuple[IndexStore, list[_Batch]]:
    """Fit the embedder and write a new index; also returns batches already embedded while fitting."""
    if embedder is None:
        from cbir.features.base import make_extractor

        embedder = Embedder(make_extractor("color"))
    embedder.extractor.check_params()
    if embedder.pca is not None:
        embedder.pca.check_params()
    path.mkdir(parents=True, exist_ok=True)
    lock = WriteLock(path)
    try:
        # An unfinished creation (no manifest) may have left files behind;
        # the training folder stays, so interrupted training resumes.
        for leftover in [path / CATALOGUE_FILE, *path.glob(CATALOGUE_FILE + "-*"), *path.glob("vectors-*.faiss")]:
            leftover.unlink(missing_ok=True)
        shutil.rmtree(path / MODEL_DIR, ignore_errors=True)
        precomputed = _fit(embedder, files, path / TRAINING_DIR, pca_train_folder, batch_size, workers, fit_sample, progress)
        factory, search_params = resolve_index_type(index_type, embedder.dim, len(files))
        store = IndexStore.create(path, embedder, factory, search_params, lock, index_type)
    except BaseException:
        lock.release()
        if not is_index(path):
            if (path / TRAINING_DIR).is_dir():
                logger.warning("training state kept in %s: run the same command again to resume", path / TRAINING_DIR)
            else:
                shutil.rmtree(path, ignore_errors=True)
        raise
    shutil.rmtree(path / TRAINING_DIR, ignore_errors=True)  # the model and its history now live in model/
    return store, precomputed


def _fit(
    embedder: Embedder,
    files: list[Path],
    training_dir: Path,
    pca_train_folder,
    batch_size: int,
    workers: int,
    fit_sample: int,
    progress: Progress,
) -> list[_Batch]:
    """Fit what learns (the extractor, then the PCA) on a random sample of images.

    Returns the batches whose raw vectors were computed to fit a PCA on the
    collection itself, so indexing does not run them through the model again.
    """
    rng = np.random.default_rng(0)

    def sample(paths: list[Path]) -> list[Path]:
        if len(paths) <= fit_sample:
            return paths
        return [paths[i] for i in sorted(rng.choice(len(paths), size=fit_sample, replace=False))]

    extractor = embedder.extractor
    extractor.build(progress)  # loads a network or a given model before progress starts counting images
    if extractor.requires_fit and not extractor.is_fitted:
        chosen = sample(files)
        progress.start("decoding images to train the extractor", len(chosen))
        images = []
        try:
            for loaded, _ in _load_all(chosen, extractor.decode_min_side, None, workers, {}, batch_size):
                progress.advance()
                if loaded.image is not None:
                    images.append(loaded.image)
        finally:
            progress.stop()
        if not images:
            raise NoImagesError("none of the images could be read to train the extractor")
        training_dir.mkdir(parents=True, exist_ok=True)
        extractor.fit(images, work_dir=training_dir, progress=progress)
        del images
    if embedder.pca is None or embedder.pca.is_fitted:
        return []
    source = find_images(pca_train_folder) if pca_train_folder is not None else files
    chosen = sample(source)
    progress.start("extracting features to fit the PCA", len(chosen))
    try:
        raw = list(_stream(chosen, Embedder(extractor), batch_size, workers, {}, progress))
    finally:
        progress.stop()
    if not any(len(vectors) for _, vectors, _ in raw):
        raise NoImagesError("none of the images could be read to fit the PCA")
    embedder.pca.fit(np.concatenate([vectors for _, vectors, _ in raw]))
    if pca_train_folder is not None:
        return []
    return [(ok, embedder.pca.transform(vectors), failed) for ok, vectors, failed in raw]


def _plan(store: IndexStore, folder: Path, files: list[Path]) -> _Plan:
    """Mark and sweep: compare the folder with the catalogue rows under it."""
    rows = store.catalogue.images_under(str(folder))
    skipped = store.catalogue.skipped_under(str(folder))
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
    return _Plan(todo, known, unchanged, still_skipped, removed_ids, removed_skipped)


def _embed_and_commit(
    store: IndexStore,
    plan: _Plan,
    precomputed: list[_Batch],
    labels: dict[Path, str] | None,
    batch_size: int,
    workers: int,
    summary: IndexSummary,
    progress: Progress,
) -> None:
    if not plan.todo:
        return
    embedder, catalogue, dim = store.embedder(), store.catalogue, store.dim
    done = {loaded.path for ok, _, failed in precomputed for loaded in ok + failed}
    remaining = [path for path in plan.todo if path not in done]
    progress.start(f"indexing into {store.name!r}", len(plan.todo))
    progress.advance(len(plan.todo) - len(remaining))
    batches = itertools.chain(precomputed, _stream(remaining, embedder, batch_size, workers, plan.known_sha256, progress))
    try:
        for ok, vectors, not_embedded in batches:
            with catalogue.transaction():
                new_images = [
                    NewImage(
                        path=str(loaded.path),
                        size=loaded.size,
                        mtime_ns=loaded.mtime_ns,
                        sha256=loaded.sha256,
                        label=labels.get(loaded.path) if labels is not None else folder_label(loaded.path),
                        vector=vector,
                    )
                    for loaded, vector in zip(ok, vectors)
                ]
                catalogue.add_images(new_images, dim)
                for loaded in not_embedded:
                    if loaded.unchanged:
                        catalogue.update_stat(str(loaded.path), loaded.size, loaded.mtime_ns)
                    else:
                        catalogue.set_skipped(str(loaded.path), loaded.size, loaded.mtime_ns, loaded.error or "unreadable")
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
            summary.embedded += len(ok)
    finally:
        progress.stop()


def _stream(
    files: Sequence[Path],
    embedder: Embedder,
    batch_size: int,
    workers: int,
    known_sha256: dict[Path, str],
    progress: Progress,
) -> Iterator[_Batch]:
    """Yield ``(embedded files, their vectors, files not embedded)`` batch by batch, in order."""
    ok: list[LoadedFile] = []
    prepared: list[Any] = []
    not_embedded: list[LoadedFile] = []
    for loaded, item in _load_all(files, embedder.decode_min_side, embedder.prepare, workers, known_sha256, batch_size):
        progress.advance()
        if item is None:
            not_embedded.append(loaded)
        else:
            ok.append(loaded)
            prepared.append(item)
        if len(prepared) >= batch_size:
            yield ok, embedder.transform_prepared(prepared), not_embedded
            ok, prepared, not_embedded = [], [], []
    if prepared or not_embedded:
        vectors = embedder.transform_prepared(prepared) if prepared else np.zeros((0, embedder.dim), np.float32)
        yield ok, vectors, not_embedded


def _load_all(
    files: Sequence[Path],
    min_side: int | None,
    prepare,
    workers: int,
    known_sha256: dict[Path, str],
    batch_size: int,
) -> Iterator[tuple[LoadedFile, Any]]:
    """Load (and ``prepare``) files in a thread pool, yielding in input order.

    About one batch plus a few files per worker are in flight: enough for
    the next batch to be decoded while the model runs on this one, and
    memory does not grow with the folder. With ``prepare`` the decoded image is dropped once
    prepared; without it the item is the image itself.
    """

    def work(path: Path) -> tuple[LoadedFile, Any]:
        loaded = load_file(path, min_side, known_sha256.get(path))
        if loaded.image is None:
            return loaded, None
        if prepare is None:
            return loaded, loaded.image
        try:
            item = prepare(loaded.image)
        except Exception as exc:  # an image the extractor cannot handle is skipped like a broken file
            loaded.error = f"cannot process: {exc}"
            item = None
        loaded.image = None
        return loaded, item

    in_flight: deque[Future] = deque()
    limit = batch_size + 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbir-load") as pool:
        try:
            for path in files:
                in_flight.append(pool.submit(work, path))
                if len(in_flight) >= limit:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()


def _nothing_readable_message(folder: Path, skipped: list[tuple[str, str]]) -> str:
    example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return f"none of the image files under {folder} could be read{example}"


def remove_paths(
    paths: Sequence[str | os.PathLike],
    name: str,
    index_dir: str | os.PathLike | None = None,
    wait: bool = False,
) -> int:
    """Remove images from the index ``name``; a folder removes everything indexed under it.

    All or nothing: if any path matches nothing in the index, nothing is
    removed and :class:`~cbir.errors.UsageError` names it. Returns the number
    of images removed.
    """
    with IndexStore.open(index_path(name, index_dir), writable=True, wait=wait) as store:
        ids: set[int] = set()
        skipped_paths: list[str] = []
        for raw in paths:
            key = str(normalize_path(raw))
            rows = store.catalogue.images_under(key)
            skipped = store.catalogue.skipped_under(key)
            if not rows and not skipped:
                raise UsageError(f"not in index {name!r}: {key}")
            ids.update(row.id for row in rows.values())
            skipped_paths.extend(skipped)
        with store.catalogue.transaction():
            removed = store.catalogue.remove_ids(sorted(ids))
            store.catalogue.remove_skipped(skipped_paths)
            # Remembered, so that indexing a folder above them does not bring them back.
            store.set_removed_paths([*store.removed_paths(), *(str(normalize_path(p)) for p in paths)])
        store.save_vectors()
    return removed
