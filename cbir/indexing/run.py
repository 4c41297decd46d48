"""Folder -> plan -> fit -> embed -> commit -> finish: :func:`index_folder`, incrementally.

Each stage is entered once. The plan compares the folder with the catalogue
(mark and sweep: new, changed, unchanged, gone; :mod:`cbir.indexing.plan`);
only new or changed files are embedded, and every batch of vectors is
committed together with its catalogue rows, so a run that is interrupted or
killed keeps all committed work and the next run carries on from there.

Reading, hashing, decoding and embedding go through one loader
(:class:`cbir.compute.loader.Loader`): in this process, in worker processes
on every usable core, or on a Ray cluster; every write stays in this
process, through the index's one writer (:mod:`cbir.store.writer`), which
takes values and finishes explicitly. Memory stays bounded however large
the folder.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


from cbir.ann.rerank import DEFAULT_ALPHA
from cbir.ann.vectors import resolve_index_type
from cbir.compute.loader import Loader
from cbir.compute.work import Batch, KnownContent, LoadedFile, WorkerError, check_workers
from cbir.errors import ConfigMismatchError, NoImagesError, UsageError
from cbir.features.pipeline import Embedder, EmbedderOptions
from cbir.images.labels import as_label_table, assign_labels, folder_label
from cbir.images.scan import normalize_path, scan_folder
from cbir.indexing.fit import fit_new_embedder
from cbir.indexing.plan import KEEP, IndexPlan, dba_setting, honour_removed, plan_update, stat_files
from cbir.indexing.reuse import reuse_stored_entries
from cbir.indexing.summary import IndexSummary
from cbir.progress import SILENT, Progress
from cbir.store.catalogue import ImageMetadata, NewImage
from cbir.store.locations import index_path, name_for_folder
from cbir.store.writer import IndexWriter, Restat, SkippedFile, open_writer

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64

#: At most this many images are decoded to fit a learning extractor or a PCA.
DEFAULT_FIT_SAMPLE = 20_000


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
    dba: int | None | str = KEEP,
    dba_alpha: float = DEFAULT_ALPHA,
    local_features: bool | str | None = None,
    frame_interval: float | None = None,
    max_frames: int | None = None,
    only: Sequence[str | os.PathLike] | None = None,
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
    local_features : bool or str, optional
        Store local features for spatial verification (``cbir query --verify``,
        :mod:`cbir.features.local`): ``True``, a kind (``"rootsift"``,
        ``"orb"``) or a whole ``LocalFeatureConfig`` dict turns them on, ``False`` drops them, ``None`` keeps the
        index's setting. On an existing index, images that lack them are
        decoded for them alone: their vectors are not re-embedded.
    frame_interval, max_frames : float, int, optional
        Which frames of a video file are indexed (each an entry naming the
        video and its time): one every ``frame_interval`` seconds (default 2)
        and one at each scene change, at most ``max_frames`` (default 100) a
        video, spread over all of it (:mod:`cbir.images.video`). ``None``
        keeps the index's setting; a new setting applies to the videos this
        run decodes (new or changed ones).
    only : sequence of paths, optional
        Update an existing index for these files and folders under ``folder``
        alone (a watcher's batch of changed paths): they are scanned, planned
        and committed exactly as a full run would, and everything else under
        ``folder`` is taken as unchanged. Paths that are gone remove their rows.

    The run is one pass: plan (a pure function over the scan and the
    catalogue rows, :mod:`cbir.indexing.plan`) -> fit (a new index's
    extractor and PCA) -> embed (one backend: this process, worker processes
    or Ray) -> commit (batch by batch) -> finish (removals, labels, one
    manifest write, retune, DBA, the FAISS snapshot).

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
    if embedder is not None and options is not None:
        raise UsageError("give either an embedder or options, not both")
    if options is not None and not isinstance(options, EmbedderOptions):
        options = EmbedderOptions.from_mapping(options)
    loader = Loader(check_workers(workers), explicit=workers is not None, batch_size=batch_size)
    folder = normalize_path(folder)
    name = name if name is not None else name_for_folder(folder)
    within = None if only is None else [str(normalize_path(p)) for p in only]
    scan = scan_folder(folder, exclude=exclude, include_hidden=include_hidden, within=within)
    if not scan.images and within is None:
        raise NoImagesError(f"no image files under {folder}{_unsupported_note(scan.unsupported)}")
    labels = _labels_for(scan.images, labels)
    if ray not in (None, False):
        from cbir.compute.ray_cluster import RayRunner

        # Before anything is written: an unreachable cluster leaves no trace.
        loader.ray = RayRunner.connect(None if ray is True else ray, actors=workers)

    with open_writer(index_path(name, index_dir), wait=wait, create=within is None, progress=progress) as writer:
        summary = IndexSummary(name=name, path=str(writer.path), created=writer.created, unsupported=scan.unsupported)
        if scan.raw_sidecars:
            summary.raw_sources["sidecar"] = scan.raw_sidecars
        summary.unlisted = list(scan.unlisted)
        files = scan.images
        # -- plan ----------------------------------------------------------------
        if writer.created:
            embedder = _new_embedder(options.resolve(None) if options is not None else embedder)
            if index_type is not None:  # every extractor knows its dimension from its checked parameters
                resolve_index_type(index_type, embedder.dim, len(files))  # a bad type fails before any training
            dba_config = dba_setting(dba, dba_alpha, True, len(files))
            local_config = local_features_setting(local_features, None)
            video_config = frame_sampling_setting(frame_interval, max_frames, None)
            plan = plan_update(stat_files(files), {}, {}, scan.unlisted)
            known = None
        else:
            embedder = options.resolve(writer.embedder_config) if options is not None else embedder
            runtime_overrides = _check_same_config(writer, embedder)
            if index_type is not None:
                resolve_index_type(index_type, writer.dim, len(files))  # a bad type fails before any embedding
            removed = honour_removed(writer.removed_paths(), folder, files, include_removed)
            files = removed.files
            if removed.record is not None:
                writer.set_removed_paths(removed.record)
            dba_config = dba_setting(dba, dba_alpha, False, max(len(files), writer.count_images()))
            writer.configure(dba=None if dba_config == KEEP else (dba_config or False))
            local_config = local_features_setting(local_features, writer.local_features_config)
            writer.configure(local_features=local_config or False)
            video_config = frame_sampling_setting(frame_interval, max_frames, writer.video_config)
            writer.configure(video=video_config)
            rows, skipped = _rows_and_skipped(writer, folder, within)
            plan = plan_update(stat_files(files), rows, skipped, scan.unlisted)
            known = KnownContent.from_hashes(writer.content_hashes()) if plan.todo else None
            embedder = writer.embedder(runtime_overrides)
            writer.record_indexed_root(str(folder))
        summary.unchanged, summary.skipped = plan.unchanged, plan.still_skipped
        summary.kept_unlisted, summary.retried = plan.kept_unlisted, plan.retried
        # -- fit (a new index only) ----------------------------------------------
        precomputed: list[Batch] = []
        if writer.created:
            precomputed = fit_new_embedder(
                embedder, files, writer.training_dir, pca_train_folder, loader, fit_sample, progress, video_config
            )
            writer.create(embedder, index_type or "flat", len(files), dba=dba_config, local_features=local_config, video=video_config)
            writer.record_indexed_root(str(folder))
        # -- embed and commit ---------------------------------------------------------
        try:
            _embed_and_commit(writer, embedder, plan, known, precomputed, labels, loader, summary, progress, local_config, video_config)
            if local_config:
                summary.local_features_added = _add_missing_local_features(writer, folder, files, embedder, loader, local_config, progress)
            if not writer.created:
                summary.metadata_added = _add_missing_metadata(writer, files, embedder, loader, progress)
        except (KeyboardInterrupt, WorkerError):
            writer.finish()  # what was committed becomes the snapshot, searchable as it is; then stop
            raise
        # -- finish ------------------------------------------------------------------
        if plan.removed_ids or plan.removed_skipped:
            summary.removed = writer.remove(plan.removed_ids, plan.removed_skipped)
        if labels is not None:
            writer.set_labels({str(p): label for p, label in labels.items()})
        summary.total = writer.count_images()
        summary.total_videos, summary.total_frames = writer.video_counts()
        if writer.created and summary.total == 0:
            raise NoImagesError(_nothing_readable_message(folder, summary.skipped_files))
        if not writer.created and index_type is not None:
            writer.configure(index_type=index_type)  # its parameters chosen for the collection as it now is
        summary.vectors_rebuilt = writer.finish()
    summary.seconds = time.perf_counter() - started
    return summary


def _rows_and_skipped(writer: IndexWriter, folder: Path, within: Sequence[str] | None) -> tuple[dict, dict]:
    """The catalogue rows and skip records the plan compares the scan with: under ``folder``, or under ``within``."""
    if within is None:
        return writer.rows_under(str(folder)), writer.skipped_under(str(folder))
    rows: dict = {}
    skipped: dict = {}
    for path in within:
        rows.update(writer.rows_under(path))
        skipped.update(writer.skipped_under(path))
    return rows, skipped


def _unsupported_note(unsupported: dict[str, int]) -> str:
    if not unsupported:
        return ""
    return f" ({IndexSummary(name='', path='', unsupported=unsupported).unsupported_note()})"


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


def _check_same_config(writer: IndexWriter, embedder: Embedder | None) -> dict[str, Any]:
    """Refuse a config that would embed differently; return runtime-only parameters that differ."""
    if embedder is None:
        return {}
    built = writer.embedder_config
    differences = embedder.differences(built)
    if differences:
        listed = ", ".join(f"{key} {stored!r} (asked: {asked!r})" for key, (stored, asked) in differences.items())
        raise ConfigMismatchError(
            f"index {writer.path.name!r} was built with other options: {listed}; "
            f"leave them out to update it, or choose another --name"
        )
    return embedder.runtime_overrides(built)


def _embed_and_commit(
    writer: IndexWriter,
    embedder: Embedder,
    plan: IndexPlan,
    known: KnownContent | None,
    precomputed: list[Batch],
    labels: dict[Path, str] | None,
    loader: Loader,
    summary: IndexSummary,
    progress: Progress,
    local: dict | None = None,
    video: dict | None = None,
) -> None:
    if not plan.todo:
        return
    done = {loaded.path for ok, _, failed in precomputed for loaded in ok + failed}
    remaining = [path for path in plan.todo if path not in done]
    progress.start(f"indexing into {writer.path.name!r}", len(plan.todo))
    progress.advance(len(plan.todo) - len(remaining))
    fresh = loader.embed_batches(
        remaining, embedder, plan.known_sha256, known, progress, state_dir=writer.model_dir, local=local, video=video
    )
    label_of = _labeller(labels)
    try:
        for ok, vectors, not_embedded in itertools.chain(precomputed, fresh):
            ok, vectors, not_embedded, reused, copied = reuse_stored_entries(writer, embedder, known, ok, vectors, not_embedded, local, video)
            images = []
            for loaded, vector in zip(ok, vectors):
                key = str(loaded.path)
                time_s = loaded.frame_time if loaded.frame_time >= 0 else None
                metadata = copied.get((loaded.path, time_s)) or _metadata(loaded)
                features = loaded.local_features if local else None
                label = label_of(loaded.path, key)
                images.append(NewImage(key, loaded.size, loaded.mtime_ns, loaded.sha256, label, vector, metadata, features, time_s))
            writer.add(
                images,
                skipped=[
                    SkippedFile(str(f.path), f.size, f.mtime_ns, f.error or "unreadable")
                    for f in not_embedded
                    if not f.unchanged
                ],
                restat=[Restat(str(f.path), f.size, f.mtime_ns) for f in not_embedded if f.unchanged],
            )
            _count(summary, plan, ok, not_embedded, reused)
    finally:
        progress.stop()


def _labeller(labels: dict[Path, str] | None):
    """``label(path, str(path))``: from the labels given, else the folder's name (looked up once per folder)."""
    if labels is not None:
        return lambda path, key: labels.get(path)
    by_folder: dict[str, str] = {}

    def label(path: Path, key: str) -> str:
        folder = os.path.dirname(key)
        found = by_folder.get(folder)
        if found is None:
            found = by_folder[folder] = folder_label(path)
        return found

    return label


def _count(summary: IndexSummary, plan: IndexPlan, ok: list[LoadedFile], not_embedded: list[LoadedFile], reused: int) -> None:
    files = [loaded for loaded in ok if not loaded.more_frames]  # a video counts once, at its last frame
    updated = sum(1 for loaded in files if loaded.path in plan.known_sha256) if plan.known_sha256 else 0
    summary.updated += updated
    summary.added += len(files) - updated
    summary.videos += sum(1 for loaded in files if loaded.frame_time >= 0)
    summary.frames += sum(1 for loaded in ok if loaded.frame_time >= 0)
    for loaded in ok:
        if loaded.decoded_from:
            summary.raw_sources[loaded.decoded_from] = summary.raw_sources.get(loaded.decoded_from, 0) + 1
    for loaded in not_embedded:
        if loaded.unchanged:
            summary.unchanged += 1
        else:
            summary.skipped += 1
            summary.skipped_files.append((str(loaded.path), loaded.error or "unreadable"))
            logger.warning("skipped %s: %s", loaded.path, loaded.error)
    summary.embedded += len(ok) - reused
    summary.reused += reused


def _metadata(loaded: LoadedFile) -> ImageMetadata:
    """The catalogue's metadata of a decoded file: its own, the date falling back to its modification time."""
    taken, taken_from = loaded.taken, "exif"
    if not taken:
        taken_from = "mtime"
        taken = datetime.datetime.fromtimestamp(loaded.mtime_ns / 1e9).isoformat(timespec="seconds")
    lat, lon = (float(x) for x in loaded.gps.split(",")) if loaded.gps else (None, None)
    return ImageMetadata(
        width=loaded.width or None,
        height=loaded.height or None,
        taken=taken,
        taken_from=taken_from,
        camera_make=loaded.camera_make or None,
        camera_model=loaded.camera_model or None,
        gps_lat=lat,
        gps_lon=lon,
    )


def frame_sampling_setting(interval: float | None, max_frames: int | None, current: dict | None) -> dict:
    """The frame sampling a run uses (a :class:`~cbir.images.video.FrameSampling` dict): what is asked over the index's own."""
    from cbir.images.video import FrameSampling

    base = FrameSampling.from_dict(current)
    try:
        chosen = FrameSampling(
            interval=float(interval) if interval is not None else base.interval,
            max_frames=max_frames if max_frames is not None else base.max_frames,
            scenes=base.scenes,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return chosen.to_dict()


def local_features_setting(asked: bool | str | None, current: dict | None) -> dict | None:
    """The local-features config a run uses: ``asked`` (see :func:`index_folder`) over the index's ``current`` one."""
    from cbir.features.local import DEFAULT_DETECT_SIDE, DEFAULT_KIND, LocalFeatureConfig

    if asked is None:
        return current
    if asked is False:
        return None
    if isinstance(asked, dict):  # a whole LocalFeatureConfig (benchmarks compare settings)
        return LocalFeatureConfig.from_dict({"detect_side": DEFAULT_DETECT_SIDE, **asked}).to_dict()
    kind = DEFAULT_KIND if asked is True else asked
    if current and current.get("kind") == kind:
        return current
    return LocalFeatureConfig(kind).to_dict()


def _add_missing_local_features(
    writer: IndexWriter, folder: Path, files: Sequence[Path], embedder: Embedder, loader: Loader, local: dict, progress: Progress
) -> int:
    """Local features for the images under ``folder`` that lack them, decoded for that alone (no re-embedding).

    Committed batch by batch, so an interrupted run keeps what it did and the
    next one carries on with the rest. A file whose content no longer matches
    its row is left alone (the plan re-embeds changed files).
    """
    rows = writer.rows_under(str(folder))
    have = writer.ids_with_local_features()
    listed = set(map(str, files))
    # A video's frames get local features only as they are indexed (with the setting on): not decoded again for them.
    wanted = {key: row for key, row in rows.items() if row.id not in have and key in listed and row.time is None}
    if not wanted:
        return 0
    paths = [Path(key) for key in wanted]
    progress.start(f"local features for {len(paths)} image(s) in {writer.path.name!r}", len(paths))
    added = 0
    try:
        for loaded_files in loader.local_features(paths, embedder.decode_min_side, local, progress):
            records = [
                (wanted[str(f.path)].id, f.local_features)
                for f in loaded_files
                if f.local_features and f.sha256 == wanted[str(f.path)].sha256
            ]
            writer.add_local_features(records)
            added += len(records)
    finally:
        progress.stop()
    return added


def _add_missing_metadata(writer: IndexWriter, files: Sequence[Path], embedder: Embedder, loader: Loader, progress: Progress) -> int:
    """Metadata for the listed images indexed without any (before metadata existed): read, not re-embedded.

    Each file is read and decoded as the extractor decodes it (reduced), for
    its size, date and camera only; committed batch by batch. A file whose
    content no longer matches its row is left alone (the plan re-embeds it).
    """
    missing = writer.ids_without_metadata()
    if not missing:
        return 0
    listed = set(map(str, files))
    wanted = {row.path: row for row in writer.rows_by_id(sorted(missing)) if row.time is None and row.path in listed}  # photos
    if not wanted:
        return 0
    paths = [Path(key) for key in wanted]
    progress.start(f"metadata for {len(paths)} image(s) indexed without it in {writer.path.name!r}", len(paths))
    added = 0
    try:
        for loaded_files in loader.local_features(paths, embedder.decode_min_side, None, progress):
            records = [
                (wanted[str(f.path)].id, _metadata(f))
                for f in loaded_files
                if not f.error and f.sha256 == wanted[str(f.path)].sha256
            ]
            writer.add_metadata(records)
            added += len(records)
    finally:
        progress.stop()
    return added


def _nothing_readable_message(folder: Path, skipped: list[tuple[str, str]]) -> str:
    example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return f"none of the image files under {folder} could be read{example}"


@dataclass(frozen=True)
class Removal:
    """What :func:`remove_paths` took out: files (a video once), and index entries (a video's: one per frame)."""

    files: int
    entries: int
    videos: int = 0

    def describe(self) -> str:
        """``3 image(s)``; ``1 file (4 frames)`` or ``3 file(s) (a video's 4 frames among 6 entries)`` with videos."""
        if not self.videos:
            return f"{self.files} image(s)"
        frames = self.entries - (self.files - self.videos)
        if self.files == 1:
            return f"1 file ({frames} frames)"
        return f"{self.files} file(s) ({self.entries} entries, {frames} of them frames of {self.videos} video(s))"


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
    :class:`Removal`: the files and the entries removed. ``progress`` follows the snapshot's update (DBA's
    neighbours of the images that lost one).
    """
    with open_writer(index_path(name, index_dir), wait=wait, create=False, progress=progress) as writer:
        ids: set[int] = set()
        videos: set[str] = set()
        files: set[str] = set()
        skipped_paths: list[str] = []
        for raw in paths:
            key = str(normalize_path(raw))
            rows = writer.rows_under(key)
            skipped = writer.skipped_under(key)
            if not rows and not skipped:
                raise UsageError(f"not in index {name!r}: {key}")
            ids.update(row.id for row in rows.values())
            files.update(row.path for row in rows.values())
            videos.update(row.path for row in rows.values() if row.time is not None)
            skipped_paths.extend(skipped)
        # Remembered, so that indexing a folder above them does not bring them back.
        remembered = [*writer.removed_paths(), *(str(normalize_path(p)) for p in paths)]
        removed = writer.remove(sorted(ids), skipped_paths, removed_paths=remembered)
        writer.finish()
        return Removal(len(files), removed, len(videos))
