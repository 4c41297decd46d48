"""``cbir index`` and ``cbir remove``: build, update and shrink an index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cbir.cli._extractor_options import with_extractor_options
from cbir.cli._common import (
    TidyCommand,
    AlphaOption,
    IndexDirOption,
    JsonOption,
    LabelColumnOption,
    NameOption,
    PathColumnOption,
    handle_errors,
    print_json,
    progress_bar,
    read_labels,
    show_training_epochs,
)

def _local_features_argument(kind: str | None, drop: bool) -> bool | str | None:
    """``index_folder``'s ``local_features`` from ``--local-features [KIND]`` / ``--no-local-features``."""
    from cbir.errors import UsageError
    from cbir.features.local import KINDS

    if drop and kind is not None:
        raise UsageError("--local-features and --no-local-features contradict each other")
    if drop:
        return False
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--local-features takes {' or '.join(KINDS)}, got {kind!r}")
    return kind


def _dba_arguments(dba: int | None, no_dba: bool, alpha: float | None) -> dict[str, Any]:
    """``index_folder``'s ``dba`` / ``dba_alpha`` from ``--dba`` / ``--no-dba`` / ``--alpha``."""
    from cbir.indexing.plan import KEEP
    from cbir.store.dba import dba_config
    from cbir.errors import UsageError
    from cbir.ann.rerank import DEFAULT_ALPHA

    if no_dba and dba is not None:
        raise UsageError("--dba and --no-dba contradict each other")
    chosen = None if no_dba else (KEEP if dba is None else dba)
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if chosen not in (None, KEEP):
        dba_config(chosen, alpha)  # one clean error for --dba 0 or a bad --alpha, before any work
    return {"dba": chosen, "dba_alpha": alpha}


def _parse_workers(text: str | None) -> int | None:
    from cbir.errors import UsageError

    if text is None:
        return None
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise UsageError(f"--workers must be a whole number of at least 1, got {text!r}")
    return workers


def _quiet_ray() -> None:
    """Ray's warnings and notes are for Ray's developers here (progress bars turned off, token
    authentication on the local cluster it starts); errors still show. Ray sets its loggers'
    levels when it is imported, so the application sets them after that."""
    import logging

    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return  # index_folder says which extra to install
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


_RAY_ADDRESS = re.compile(r"^(auto|ray://.+|[\w.\-]+:\d+|\[[0-9a-fA-F:]+\]:\d+)$")


class IndexCommand(TidyCommand):
    """``--ray`` takes an optional address: without one (or before the folder) it means ``auto``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--ray" and (i + 1 == len(args) or not _RAY_ADDRESS.match(args[i + 1])):
                args.insert(i + 1, "auto")
                break
        return super().parse_args(ctx, args)


def _index(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.", show_default=False)],
    name: Annotated[
        Optional[str], typer.Option("--name", "-n", help="Name of the index. (default: the folder's name)", show_default=False)
    ] = None,
    index_dir: IndexDirOption = None,
    extractor: Annotated[
        Optional[str],
        typer.Option(
            "--extractor",
            "-e",
            help="Feature extractor for a new index: color, cnn or autoencoder. An existing index keeps its own. "
            "(default: color, or the one the options given belong to)",
            show_default=False,
        ),
    ] = None,
    # Replaced by an option per declared extractor parameter, and --param (see _extractor_options.py).
    extractor_params: Optional[dict[str, Any]] = None,
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            help="A model from 'cbir train-autoencoder' (model.keras or its folder); without it the autoencoder trains on the collection.",
            exists=True,
            show_default=False,
            rich_help_panel="Autoencoder (--extractor autoencoder)",
        ),
    ] = None,
    pca: Annotated[
        Optional[int], typer.Option("--pca", min=1, help="Reduce vectors to this many dimensions with PCA (new indexes).")
    ] = None,
    pca_whiten: Annotated[bool, typer.Option("--pca-whiten", help="Whiten the PCA components.")] = False,
    pca_shrinkage: Annotated[
        Optional[float],
        typer.Option("--pca-shrinkage", help="With --pca-whiten: shrink the variances towards their mean by this fraction, 0 to 1. (default: 0)", show_default=False),
    ] = None,
    pca_power: Annotated[
        Optional[float],
        typer.Option("--pca-power", help="Signed power of each PCA coordinate, above 0 and at most 1. (default: 1, none)", show_default=False),
    ] = None,
    pca_train: Annotated[
        Optional[Path], typer.Option("--pca-train", help="Fit the PCA on this folder instead of the collection.", exists=True, file_okay=False)
    ] = None,
    index_type: Annotated[
        Optional[str],
        typer.Option(
            "--index-type",
            help="FAISS index: flat (exact), hnsw (graph), ivf (inverted lists), ivfpq (inverted lists of compressed 4-bit codes, "
            "re-ranked exactly), or a factory string such as 'IVF1024,PQ32'. "
            "Parameters follow the collection size. Changing it on an existing index rebuilds the FAISS index "
            "from stored vectors without re-embedding. (default: flat, or the index's own)",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option("--labels", help="CSV of labels to store (see 'cbir evaluate --help'); default label: the image's folder name.", dir_okay=False),
    ] = None,
    path_column: PathColumnOption = None,
    label_column: LabelColumnOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per commit (and per model call where the network runs in this process).")] = 64,
    workers: Annotated[
        Optional[str],
        typer.Option(
            "--workers",
            metavar="N",
            help="Worker processes that read, decode and embed images, each with its own copy of the network "
            "(the Keras runtime's runs once, here); this process writes the index. "
            "With --ray: actors. (default: the usable CPU cores)",
            show_default=False,
        ),
    ] = None,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Read and embed on a Ray cluster: alone or 'auto' joins a running local cluster or starts one; "
            "HOST:PORT or ray://HOST:PORT joins that cluster. Every node must read the images (and the index folder) "
            "at the same paths: a shared filesystem. Needs pip install 'cbir\\[ray]'.",
            show_default=False,
        ),
    ] = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude",
            help="Leave out files and folders matching this glob (relative path or name, e.g. '*.png', 'raw/*', 'thumbnails'); repeatable.",
            show_default=False,
        ),
    ] = None,
    include_hidden: Annotated[
        bool, typer.Option("--include-hidden", help="Also index hidden files and folders (names starting with '.').")
    ] = False,
    include_removed: Annotated[
        bool, typer.Option("--include-removed", help="Add back files under FOLDER that 'cbir remove' took out.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If another process is writing this index, wait instead of failing.")] = False,
    as_json: JsonOption = False,
    dba: Annotated[
        Optional[int],
        typer.Option(
            "--dba",
            help="Database-side augmentation: index each vector as the weighted mean of itself and its K nearest "
            "neighbours, recomputed from the original vectors whenever the collection changes. "
            "(default: 2 for a new index, the index's own setting otherwise; --no-dba turns it off)",
            show_default=False,
        ),
    ] = None,
    no_dba: Annotated[bool, typer.Option("--no-dba", help="Index the original vectors (no database-side augmentation).")] = False,
    local_features: Annotated[
        Optional[str],
        typer.Option(
            "--local-features",
            metavar="[KIND]",
            help="Store local features for 'cbir query --verify': rootsift (alone: rootsift; about 33 KB an image) "
            "or orb (faster, 9 KB). On an existing index only the images that lack them are decoded; "
            "their vectors are kept. Kept on later updates; --no-local-features drops them.",
            show_default=False,
        ),
    ] = None,
    no_local_features: Annotated[bool, typer.Option("--no-local-features", help="Drop the index's local features.")] = False,
    frame_interval: Annotated[
        Optional[float],
        typer.Option(
            "--frame-interval",
            metavar="SECONDS",
            help="Video files are indexed as frames, each a result naming the video and its time: one every SECONDS "
            "and one at each scene change (default 2; longer apart in videos longer than the interval times --max-frames). "
            "Kept for later updates; applies to the videos a run decodes (new or changed).",
            show_default=False,
        ),
    ] = None,
    max_frames: Annotated[
        Optional[int],
        typer.Option("--max-frames", metavar="N", help="At most N frames of one video, spread over all of it (default 100).", show_default=False),
    ] = None,
    alpha: AlphaOption = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Then keep watching FOLDER and index each batch of changes as 'cbir watch' does (Ctrl-C stops; needs pip install 'cbir\\[watch]')."),
    ] = False,
) -> None:
    """Index a folder of images (and video files, as frames), or update an existing index with what changed in it.

    New and changed files are embedded, files that disappeared are removed,
    unreadable files are skipped with a warning and recorded. Interrupting is
    safe: run the same command again to continue.
    """
    from cbir.indexing.run import index_folder

    show_training_epochs()
    if ray:
        _quiet_ray()
    options = {"extractor": extractor, "model": model, "pca": pca, "pca_whiten": pca_whiten or None,
               "pca_shrinkage": pca_shrinkage, "pca_power": pca_power, **(extractor_params or {})}
    index_options = dict(
        options=options,
        index_type=index_type,
        labels=read_labels(labels, path_column, label_column),
        pca_train_folder=pca_train,
        batch_size=batch_size,
        workers=_parse_workers(workers),
        ray=ray,
        wait=wait,
        progress=progress_bar(),
        exclude=exclude or (),
        include_hidden=include_hidden,
        include_removed=include_removed,
        **_dba_arguments(dba, no_dba, alpha),
        local_features=_local_features_argument(local_features, no_local_features),
        frame_interval=frame_interval,
        max_frames=max_frames,
    )
    if watch:
        from cbir.cli.watch import watch_and_report

        index_options.pop("progress")
        index_options.pop("wait")  # a watcher always waits for another writer
        watch_and_report(folder, name, index_dir, 300, 5_000, as_json, **index_options)
        return
    summary = index_folder(folder, name, index_dir, **index_options)
    if as_json:
        print_json(summary.to_dict())
        return
    verb = "created" if summary.created else "updated"
    print(
        f"{verb} index {summary.name!r} ({summary.path}): {summary.total} images; this run: "
        f"{summary.added} added, {summary.updated} updated, {summary.removed} removed, "
        f"{summary.unchanged} unchanged, {summary.skipped} skipped "
        f"({summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s)"
    )
    if summary.vectors_rebuilt:
        print(f"{summary.vectors_rebuilt}; stored vectors reused, nothing re-embedded")
    if summary.unsupported:
        print(f"not indexed: {summary.unsupported_note()}")
    if summary.raw_note():
        print(summary.raw_note())
    if summary.video_note():
        print(summary.video_note())
    if summary.unlisted:
        shown = ", ".join(summary.unlisted[:3]) + (", ..." if len(summary.unlisted) > 3 else "")
        print(
            f"{len(summary.unlisted)} folder(s) could not be listed ({shown}): "
            f"{summary.kept_unlisted} indexed image(s) under them kept, not removed; run again once they are back"
        )
    if summary.metadata_added:
        print(f"metadata (date, camera, size) read for {summary.metadata_added} image(s) indexed without it; their vectors were kept")
    if summary.local_features_added:
        print(f"local features added to {summary.local_features_added} image(s) already indexed; their vectors were kept")
    if summary.retried:
        print(f"{summary.retried} file(s) skipped earlier for a reason that may have passed (permission, I/O) were tried again")


def index_command():
    """``cbir index`` with an option for each parameter the registered extractors declare now."""
    return handle_errors(with_extractor_options(_index))


index = index_command()


@handle_errors
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders to take out of the index.", show_default=False)],
    name: NameOption,
    index_dir: IndexDirOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another process is writing this index, wait instead of failing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove images from an index (the files themselves are not touched).

    A folder removes every image indexed under it. If any path is not in the
    index, nothing is removed. Removals are remembered: indexing a folder
    above them again leaves them out (--include-removed adds them back).
    """
    from cbir.indexing.run import remove_paths

    removed = remove_paths(paths, name, index_dir, wait=wait, progress=progress_bar())
    if as_json:
        print_json({"name": name, "removed": removed.files, "entries": removed.entries, "videos": removed.videos})
    else:
        print(f"removed {removed.describe()} from index {name!r}")
