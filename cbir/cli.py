"""The ``cbir`` command line: thin commands over the library.

Each command parses its options, makes one library call and prints the result:
results on stdout (``--json`` for scripts), progress bars, warnings and errors
on stderr. Library errors (:class:`cbir.errors.CbirError`) become a one-line
``error: ...`` message and a non-zero exit code, never a traceback. Library
modules are imported inside the commands so ``cbir --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="cbir",
    help="Content-based image retrieval: index image folders, search them by example image, evaluate retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# -- shared options ----------------------------------------------------------
NameOption = Annotated[str, typer.Option("--name", "-n", help="Name of the index (a folder under --index-dir).")]
IndexDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--index-dir",
        help="Folder holding named indexes. (default: $CBIR_INDEX_DIR or ./indexes)",
        file_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
NprobeOption = Annotated[
    Optional[int], typer.Option("--nprobe", min=1, help="IVF indexes: inverted lists to visit (more = exact-er, slower).")
]
EfSearchOption = Annotated[
    Optional[int], typer.Option("--ef-search", min=1, help="HNSW indexes: candidate list size (more = exact-er, slower).")
]


def _handle_errors(command: Callable) -> Callable:
    """Turn library errors into ``error: message`` on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cbir.errors import CbirError

        _configure_logging()
        try:
            return command(*args, **kwargs)
        except CbirError as exc:
            stderr.print(f"[bold red]error:[/] {exc}", markup=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("interrupted: work committed so far is kept; run the same command again to continue")
            raise typer.Exit(code=130) from None

    return wrapper


class _ConsoleLogHandler(logging.Handler):
    """Warnings from the library as one ``warning: ...`` line each, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        stderr.print(f"{prefix}{record.getMessage()}", markup=False)


def _show_training_epochs() -> None:
    """One line per training epoch (the autoencoder logs them at INFO)."""
    logging.getLogger("cbir.features.autoencoder").setLevel(logging.INFO)


def _configure_logging() -> None:
    logger = logging.getLogger("cbir")
    if not any(isinstance(h, _ConsoleLogHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleLogHandler())
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _progress():
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""
    from cbir.progress import SILENT

    if not stderr.is_terminal:
        return SILENT
    return _RichProgress()


class _RichProgress:
    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        self._progress_class = Progress
        self._bar = None
        self._task = None

    def start(self, description: str, total: int, unit: str = "images") -> None:
        self.stop()
        self._unit = unit
        self._bar = self._progress_class(*self._columns, console=stderr, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, rate="")

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, steps)
            speed = self._bar.tasks[0].speed
            if speed:
                # Images come many per second; epochs take many seconds each.
                rate = f"{speed:.1f} img/s" if self._unit == "images" else f"{1 / speed:.1f} s per {self._unit.rstrip('s')}"
                self._bar.update(self._task, rate=rate)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


PathColumnOption = Annotated[
    Optional[str], typer.Option("--path-column", help="Labels CSV: column of image paths. (default: the first column)", show_default=False)
]
LabelColumnOption = Annotated[
    Optional[str],
    typer.Option(
        "--label-column",
        help="Labels CSV: column of labels. (default: 'label', 'class', 'class_name' or 'category', else the last column)",
        show_default=False,
    ),
]


def _read_labels(path: Path | None, path_column: str | None, label_column: str | None) -> dict[str, str] | None:
    from cbir.errors import UsageError
    from cbir.labels import read_labels_csv

    if path is None:
        if path_column or label_column:
            raise UsageError("--path-column and --label-column need --labels")
        return None
    return read_labels_csv(path, path_column, label_column)


_COLOR = "Colour histogram (--extractor color)"
_CNN = "CNN (--extractor cnn)"
_AE = "Autoencoder (--extractor autoencoder)"


def _weights_option(weights: str | None) -> str | None:
    # A file is stored in the manifest by absolute path, so a later update or
    # query from another directory finds the same file.
    if weights is None or weights in ("imagenet", "none"):
        return weights
    return str(Path(weights).expanduser().absolute())


_CNN_ONLY = {"backbone", "weights", "pooling", "gem_p", "resize", "runtime"}
_AE_ONLY = {"embedding", "epochs", "channels"}


def _existing_embedder_config(name: str, index_dir: Path | None) -> dict[str, Any] | None:
    from cbir.errors import CbirError
    from cbir.store import index_path, is_index, read_manifest

    path = index_path(name, index_dir)
    if not is_index(path):
        return None
    try:
        return read_manifest(path)["embedder"]
    except CbirError:
        return None  # opening the index reports the damage


def _implied_extractor(params: dict[str, Any], model: Path | None) -> str:
    """Without --extractor, a new index uses the extractor its options belong to."""
    if model is not None or _AE_ONLY & set(params):
        return "autoencoder"
    if _CNN_ONLY & set(params):
        return "cnn"
    return "color"


def _make_extractor(name: str, params: dict[str, Any], model: Path | None):
    """The extractor the options describe; each extractor refuses options it does not take."""
    from cbir.errors import UsageError
    from cbir.features.base import make_extractor

    if model is None:
        return make_extractor(name, **params)
    if name != "autoencoder":
        raise UsageError("--model applies to --extractor autoencoder")
    from cbir.features.autoencoder import AutoencoderExtractor

    return AutoencoderExtractor.from_pretrained(model, **params)


def _parse_bins(text: str) -> list[int]:
    from cbir.errors import UsageError

    parts = text.replace("x", ",").split(",")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--bins must look like 8,12,3 (hue, saturation, value), got {text!r}") from None


# -- commands ----------------------------------------------------------------
@app.command()
@_handle_errors
def index(
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
            help="Feature extractor for a new index: color, cnn or autoencoder. An existing index keeps its own. (default: color)",
            show_default=False,
        ),
    ] = None,
    bins: Annotated[
        Optional[str],
        typer.Option("--bins", help="Hue,saturation,value bins per region. (default: 8,12,3)", show_default=False, rich_help_panel=_COLOR),
    ] = None,
    backbone: Annotated[
        Optional[str],
        typer.Option(
            "--backbone",
            help="mobilenet, mobilenetv2, efficientnetb0, resnet50 or vgg16. (default: mobilenet)",
            show_default=False,
            rich_help_panel=_CNN,
        ),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(
            "--weights",
            help="imagenet (Keras' cache, downloaded if missing), none (random), or a .h5 / .weights.h5 FILE. (default: imagenet)",
            show_default=False,
            rich_help_panel=_CNN,
        ),
    ] = None,
    pooling: Annotated[
        Optional[str], typer.Option("--pooling", help="avg, max or gem. (default: avg)", show_default=False, rich_help_panel=_CNN)
    ] = None,
    gem_p: Annotated[
        Optional[float], typer.Option("--gem-p", help="Exponent of gem pooling. (default: 3)", show_default=False, rich_help_panel=_CNN)
    ] = None,
    resize: Annotated[
        Optional[str],
        typer.Option("--resize", help="squash, crop or pad to a square. (default: squash)", show_default=False, rich_help_panel=_CNN),
    ] = None,
    runtime: Annotated[
        Optional[str],
        typer.Option(
            "--runtime",
            help="auto (the faster of tflite and openvino for the backbone), tflite (LiteRT), openvino, or keras (reference); same vectors. (default: auto)",
            show_default=False,
            rich_help_panel=_CNN,
        ),
    ] = None,
    input_size: Annotated[
        Optional[int],
        typer.Option(
            "--input-size", help="Network input side in pixels. (default: 224 for cnn, 64 for autoencoder)", show_default=False, rich_help_panel=_CNN
        ),
    ] = None,
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            help="A model from 'cbir train-autoencoder' (model.keras or its folder); without it the autoencoder trains on the collection.",
            exists=True,
            show_default=False,
            rich_help_panel=_AE,
        ),
    ] = None,
    embedding: Annotated[
        Optional[str],
        typer.Option(
            "--embedding",
            help="pool (multi-scale pooled encoder activations) or flatten (the bottleneck; for centred, aligned objects). (default: pool)",
            show_default=False,
            rich_help_panel=_AE,
        ),
    ] = None,
    epochs: Annotated[
        Optional[int], typer.Option("--epochs", min=1, help="Most training epochs. (default: 40)", show_default=False, rich_help_panel=_AE)
    ] = None,
    grey: Annotated[Optional[bool], typer.Option("--grey", help="Train on greyscale images.", show_default=False, rich_help_panel=_AE)] = None,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="Random seed of training (and of cnn --weights none). (default: 0)", show_default=False)
    ] = None,
    pca: Annotated[
        Optional[int], typer.Option("--pca", min=1, help="Reduce vectors to this many dimensions with PCA (new indexes).")
    ] = None,
    pca_whiten: Annotated[bool, typer.Option("--pca-whiten", help="Whiten the PCA components.")] = False,
    pca_train: Annotated[
        Optional[Path], typer.Option("--pca-train", help="Fit the PCA on this folder instead of the collection.", exists=True, file_okay=False)
    ] = None,
    index_type: Annotated[
        Optional[str],
        typer.Option(
            "--index-type",
            help="FAISS index: flat (exact), hnsw, ivf, ivfpq, or a factory string such as 'IVF1024,PQ32'. "
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
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.")] = 64,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Decoding threads. (default: CPU count)", show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another process is writing this index, wait instead of failing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Index a folder of images, or update an existing index with what changed in it.

    New and changed files are embedded, files that disappeared are removed,
    unreadable files are skipped with a warning and recorded. Interrupting is
    safe: run the same command again to continue.
    """
    from cbir.features.pca import PCAReduction
    from cbir.features.pipeline import Embedder
    from cbir.indexer import index_folder

    _show_training_epochs()
    given = {
        "bins": _parse_bins(bins) if bins is not None else None,
        "backbone": backbone,
        "weights": _weights_option(weights),
        "pooling": pooling,
        "gem_p": gem_p,
        "resize": resize,
        "runtime": runtime,
        "input_size": input_size,
        "embedding": embedding,
        "epochs": epochs,
        "channels": 1 if grey else None,
        "seed": seed,
    }
    params = {key: value for key, value in given.items() if value is not None}
    pca_step = PCAReduction(pca, whiten=pca_whiten) if pca is not None else None
    embedder = None
    if extractor is not None or params or pca is not None or model is not None:
        name = name or Path(folder).resolve().name
        existing = _existing_embedder_config(name, index_dir)
        if existing is not None and model is None and extractor in (None, existing["extractor"]["name"]):
            # Options given for an existing index change only what they name.
            stored = existing["extractor"]
            embedder = Embedder.from_config(
                {
                    "extractor": {**stored, "params": {**stored.get("params", {}), **params}},
                    "pca": pca_step.get_params() if pca_step is not None else existing.get("pca"),
                }
            )
        else:
            embedder = Embedder(_make_extractor(extractor or _implied_extractor(params, model), params, model), pca_step)
    summary = index_folder(
        folder,
        name or Path(folder).resolve().name,
        index_dir,
        embedder=embedder,
        index_type=index_type,
        labels=_read_labels(labels, path_column, label_column),
        pca_train_folder=pca_train,
        batch_size=batch_size,
        workers=workers,
        wait=wait,
        progress=_progress(),
    )
    if as_json:
        _print_json(summary.to_dict())
        return
    verb = "created" if summary.created else "updated"
    print(
        f"{verb} index {summary.name!r} ({summary.path}): {summary.total} images; this run: "
        f"{summary.added} added, {summary.updated} updated, {summary.removed} removed, "
        f"{summary.unchanged} unchanged, {summary.skipped} skipped "
        f"({summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s)"
    )


@app.command()
@_handle_errors
def query(
    image: Annotated[Path, typer.Argument(help="Query image, or a folder of query images.", show_default=False)],
    name: NameOption,
    index_dir: IndexDirOption = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results per query.")] = 10,
    as_json: JsonOption = False,
    montage: Annotated[
        Optional[Path], typer.Option("--montage", help="Write the query and its top-k as one labelled grid image (PNG/JPEG).", dir_okay=False)
    ] = None,
    nprobe: NprobeOption = None,
    ef_search: EfSearchOption = None,
) -> None:
    """Find the images most similar to IMAGE (or to each image in a folder).

    The query is embedded exactly as the collection was (the index's saved
    extractor config). Output: rank, score (cosine similarity, higher is
    closer) and path; --json gives {"query", "results": [{"rank", "path", "score"}]},
    a list of those for a folder.
    """
    from cbir.errors import UsageError
    from cbir.images import find_images
    from cbir.search import Searcher

    is_folder = image.is_dir()
    if not is_folder and not image.exists():
        raise UsageError(f"query image does not exist: {image}")
    paths = find_images(image) if is_folder else [image]
    if is_folder and not paths:
        raise UsageError(f"no image files in {image}")
    if montage is not None and is_folder:
        raise UsageError("--montage takes a single query image, not a folder")
    with Searcher.open(name, index_dir, nprobe=nprobe, ef_search=ef_search) as searcher:
        if is_folder:
            results = searcher.query_many(
                paths, k, on_error=lambda path, exc: stderr.print(f"warning: skipped query {exc}", markup=False)
            )
        else:
            results = [searcher.query(image, k)]
    if montage is not None:
        from cbir.montage import write_montage

        write_montage(results[0], montage)
        stderr.print(f"montage written to {montage}", markup=False)
    if as_json:
        _print_json([r.to_dict() for r in results] if is_folder else results[0].to_dict())
        return
    for n, result in enumerate(results):
        if is_folder:
            print(("\n" if n else "") + f"query: {result.query}")
        for match in result.results:
            print(f"{match.rank:>4}  {match.score:.4f}  {match.path}")


@app.command()
@_handle_errors
def evaluate(
    name: NameOption,
    index_dir: IndexDirOption = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            help="CSV of labels (header row; path column first, label column 'label'/'class_name' or last; paths relative to the CSV). "
            "(default: labels stored at indexing time, i.e. folder names)",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    path_column: PathColumnOption = None,
    label_column: LabelColumnOption = None,
    as_json: JsonOption = False,
    nprobe: NprobeOption = None,
    ef_search: EfSearchOption = None,
) -> None:
    """Measure retrieval quality leave-one-out: every image queries all the others.

    Relevant = same label. Reports precision@k and recall@k (k = 1, 5, 10, 20,
    50), mAP over the full ranking, and per-class precision@10 and mAP.
    """
    from cbir.evaluate import evaluate_index

    table = _read_labels(labels, path_column, label_column)
    report = evaluate_index(name, index_dir, labels=table, progress=_progress(), nprobe=nprobe, ef_search=ef_search)
    if as_json:
        _print_json(report.to_dict())
        return
    print(f"index {name!r}: {report.n_queries} queries, leave-one-out")
    print(f"mAP     {report.map:.4f}")
    print("k       " + "  ".join(f"{k:>6}" for k in report.precision))
    print("P@k     " + "  ".join(f"{v:6.4f}" for v in report.precision.values()))
    print("R@k     " + "  ".join(f"{v:6.4f}" for v in report.recall.values()))
    print("per class:  P@10    mAP     n")
    for label, entry in report.per_class.items():
        print(f"  {label:<10} {entry.get('precision@10', 0):.4f}  {entry['map']:.4f}  {entry['n']}")
    if report.queries_without_relevant:
        print(f"({report.queries_without_relevant} queries had no other image of their class and were left out)")


@app.command()
@_handle_errors
def info(
    name: Annotated[str, typer.Argument(help="Name of the index.", show_default=False)],
    index_dir: IndexDirOption = None,
    skipped: Annotated[int, typer.Option("--skipped", min=0, help="List up to this many skipped files with their reasons.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Describe an index: extractor config, dimension, index type, counts, versions."""
    from cbir.store import IndexStore, index_path

    with IndexStore.open(index_path(name, index_dir)) as store:
        data = _index_description(store)
        data["skipped_files"] = [{"path": p, "reason": r} for p, r in store.catalogue.skipped(limit=skipped)]
    if as_json:
        _print_json(data)
        return
    print(f"name        {data['name']}")
    print(f"path        {data['path']}")
    print(f"extractor   {data['extractor']}")
    print(f"dimension   {data['dim']} ({data['metric']})")
    print(f"index type  {data['index_type']} (FAISS {data['factory']})")
    print(f"images      {data['images']}")
    print(f"skipped     {data['skipped']}")
    print(f"created     {data['created']}")
    print("versions    " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    if not data["vectors_current"]:
        print("note        the vector file is behind the catalogue (interrupted run?); queries still see every committed image")
    for entry in data["skipped_files"]:
        print(f"  skipped: {entry['path']}: {entry['reason']}")


@app.command("list")
@_handle_errors
def list_command(index_dir: IndexDirOption = None, as_json: JsonOption = False) -> None:
    """List the indexes in the index directory."""
    from cbir.errors import CbirError
    from cbir.store import IndexStore, default_index_dir, list_indexes

    rows = []
    for path in list_indexes(index_dir):
        try:
            with IndexStore.open(path) as store:
                rows.append(_index_description(store))
        except CbirError as exc:
            rows.append({"name": path.name, "path": str(path.resolve()), "error": str(exc)})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        stderr.print(f"no indexes in {index_dir or default_index_dir()}", markup=False)
        return
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<20} unusable: {row['error']}")
        else:
            print(f"{row['name']:<20} {row['images']:>8} images  {row['extractor']}  [{row['index_type']}]")


def _index_description(store) -> dict[str, Any]:
    from cbir.features.pipeline import Embedder

    manifest = store.manifest
    return {
        "name": store.name,
        "path": str(store.path.resolve()),
        "extractor": Embedder.from_config(manifest["embedder"]).describe(),
        "embedder": manifest["embedder"],
        "dim": manifest["dim"],
        "metric": manifest["metric"],
        "index_type": manifest.get("index_type", manifest["factory"]),
        "factory": manifest["factory"],
        "images": store.catalogue.count_images(),
        "skipped": store.catalogue.count_skipped(),
        "created": manifest.get("created"),
        "versions": manifest.get("versions", {}),
        "vectors_current": store.vectors_are_current(),
    }


@app.command()
@_handle_errors
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders to take out of the index.", show_default=False)],
    name: NameOption,
    index_dir: IndexDirOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another process is writing this index, wait instead of failing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove images from an index (the files themselves are not touched).

    A folder removes every image indexed under it. If any path is not in the
    index, nothing is removed.
    """
    from cbir.indexer import remove_paths

    removed = remove_paths(paths, name, index_dir, wait=wait)
    if as_json:
        _print_json({"name": name, "removed": removed})
    else:
        print(f"removed {removed} image(s) from index {name!r}")


@app.command()
@_handle_errors
def duplicates(
    name: NameOption,
    index_dir: IndexDirOption = None,
    threshold: Annotated[
        float,
        typer.Option("--threshold", "-t", help="Cosine similarity (-1 to 1) at or above which two images count as near-duplicates."),
    ] = 0.95,
    as_json: JsonOption = False,
) -> None:
    """List groups of near-duplicate images in an index.

    Pairs at or above the threshold are joined into groups (connected
    components); --json gives [{"size", "min_score", "paths"}], largest first.
    """
    from cbir.duplicates import find_duplicates

    groups = find_duplicates(name, threshold, index_dir, progress=_progress())
    if as_json:
        _print_json([g.to_dict() for g in groups])
        return
    if not groups:
        print(f"no near-duplicates at similarity >= {threshold}")
    for n, group in enumerate(groups, start=1):
        print(f"group {n}: {len(group.paths)} images, lowest similarity {group.min_score:.4f}")
        for path in group.paths:
            print(f"  {path}")


@app.command("train-autoencoder")
@_handle_errors
def train_autoencoder_command(
    folder: Annotated[Path, typer.Argument(help="Folder of training images, searched recursively.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for model.keras, history.json, loss.png and checkpoints.", file_okay=False)],
    input_size: Annotated[int, typer.Option("--input-size", min=8, help="Images are resized to this square side.")] = 64,
    grey: Annotated[bool, typer.Option("--grey", help="Train on greyscale images.")] = False,
    filters: Annotated[str, typer.Option("--filters", help="Filters of the encoder blocks, each halving the size.")] = "32,64,128,256",
    latent_channels: Annotated[int, typer.Option("--latent-channels", min=1, help="Channels of the bottleneck.")] = 64,
    noise: Annotated[float, typer.Option("--noise", min=0.0, help="Gaussian noise on training inputs (0: plain autoencoder).")] = 0.1,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and small shifts while training.")] = True,
    batch_norm: Annotated[bool, typer.Option("--batch-norm/--no-batch-norm", help="BatchNorm after each convolution.")] = True,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Most epochs (training stops early when validation loss stalls).")] = 40,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Epochs without improvement before stopping.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per training step.")] = 32,
    validation_split: Annotated[float, typer.Option("--validation-split", min=0.0, max=0.9, help="Share of images held out for validation.")] = 0.1,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0, help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed, images and options give the same model.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Train a denoising autoencoder on FOLDER; run again after an interruption to resume.

    Use the model with 'cbir index PHOTOS/ --extractor autoencoder --model OUT'.
    """
    from cbir.errors import UsageError
    from cbir.features.autoencoder import HISTORY_FILE, LOSS_PLOT_FILE, MODEL_FILE, train_autoencoder

    _show_training_epochs()
    try:
        filter_list = [int(f) for f in filters.split(",")]
    except ValueError:
        raise UsageError(f"--filters must look like 32,64,128,256, got {filters!r}") from None
    trained = train_autoencoder(
        folder,
        out,
        progress=_progress(),
        input_size=input_size,
        channels=1 if grey else 3,
        filters=filter_list,
        latent_channels=latent_channels,
        noise=noise,
        augment=augment,
        batch_norm=batch_norm,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        validation_split=validation_split,
        learning_rate=learning_rate,
        seed=seed,
    )
    history = trained.history_ or {}
    epochs_run = history.get("epochs", [])
    best = epochs_run[history["best_epoch"] - 1] if history.get("best_epoch") else None
    files = {"model": str(out / MODEL_FILE), "history": str(out / HISTORY_FILE), "loss_plot": str(out / LOSS_PLOT_FILE)}
    if as_json:
        _print_json({"epochs": len(epochs_run), "best_epoch": best, **files})
        return
    summary = f"trained {len(epochs_run)} epoch(s)"
    if best is not None:
        summary += f"; best epoch {best['epoch']}: " + ", ".join(f"{k} {best[k]:.5f}" for k in ("loss", "val_loss") if k in best)
    print(summary)
    for label, path in files.items():
        print(f"{label:10} {path}")


@app.command()
@_handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo collection and montage.", file_okay=False)] = Path("cbir-demo"),
    index_dir: IndexDirOption = None,
) -> None:
    """Build a small collection from photos shipped with scikit-learn, index it, query it, evaluate it.

    Writes the collection under --out, an index named 'demo', and a montage
    PNG of one query and its matches.
    """
    from cbir.demo import run_demo

    report = run_demo(out, index_dir, progress=_progress())
    print(report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
