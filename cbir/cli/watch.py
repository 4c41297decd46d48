"""``cbir watch``: an index that follows its folder (and ``cbir index --watch``, which shares it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cbir.cli._common import IndexDirOption, JsonOption, handle_errors, print_json, progress_bar, stderr

QuietOption = Annotated[
    int,
    typer.Option("--quiet-ms", min=10, help="A batch of changes is indexed once the folder has been quiet this long (milliseconds)."),
]
MaxWaitOption = Annotated[
    int,
    typer.Option(
        "--max-wait-ms",
        min=10,
        help="The longest a batch waits after its first change, so a long copy is indexed as it goes (milliseconds).",
    ),
]


@handle_errors
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder of images to index and keep indexed.", show_default=False)],
    name: Annotated[
        Optional[str], typer.Option("--name", "-n", help="Name of the index. (default: the folder's name)", show_default=False)
    ] = None,
    index_dir: IndexDirOption = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option("--exclude", help="Leave out files and folders matching this glob (as cbir index); repeatable.", show_default=False),
    ] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Also index hidden files and folders.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per commit.")] = 64,
    quiet_ms: QuietOption = 300,
    max_wait_ms: MaxWaitOption = 5_000,
    poll: Annotated[
        bool, typer.Option("--poll", help="Look for changes by listing the folder every 300 ms instead of the OS's events (network shares, some containers).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Index a folder, then keep the index up to date as files are added, changed, moved or deleted.

    Starts with a full update (what changed while nothing watched), then
    indexes each batch of changes through the same pipeline as 'cbir index':
    a burst of new files is embedded in batches, a moved file keeps its
    stored vector, a deleted one leaves the index. A running 'cbir serve'
    shows each batch once it is committed. Ctrl-C stops; work committed is
    kept and the next start finishes a batch cut short. A new index gets
    the colour extractor: for another, use 'cbir index FOLDER --watch' with
    its options. Needs pip install 'cbir\\[watch]'. --json prints one JSON
    object a line, one a run.
    """
    watch_and_report(folder, name, index_dir, quiet_ms, max_wait_ms, as_json, force_polling=poll or None,
                     exclude=exclude or (), include_hidden=include_hidden, batch_size=batch_size)


def watch_and_report(folder: Path, name: str | None, index_dir, quiet_ms: int, max_wait_ms: int, as_json: bool, **index_options: Any) -> None:
    """Run the watcher, printing a line per run; Ctrl-C: one line, exit 130 (the CLI's convention)."""
    from cbir.indexing.watch import watch_folder

    def report(batch, summary) -> None:
        if as_json:
            print_json({"batch": None if batch is None else {"paths": len(batch.paths), "added": batch.added,
                        "modified": batch.modified, "deleted": batch.deleted}, **summary.to_dict()}, indent=None)
        else:
            print(run_line(batch, summary), flush=True)

    try:
        watch_folder(folder, name, index_dir, step_ms=quiet_ms, debounce_ms=max(quiet_ms, max_wait_ms),
                     on_run=report, progress=progress_bar(), **index_options)
    except KeyboardInterrupt:
        stderr.print("stopped watching: every batch finished is committed; the next start indexes what is left")
        raise typer.Exit(code=130) from None


def run_line(batch, summary) -> str:
    """One line for one of the watcher's runs (the rescan at its start, or a batch of changes)."""
    what = "rescan" if batch is None else f"{len(batch.paths)} path(s) changed"
    moved = f" ({summary.reused} moved or copied: vectors reused)" if summary.reused else ""
    return (
        f"{what}: {summary.added} added, {summary.updated} updated, {summary.removed} removed, "
        f"{summary.skipped} skipped{moved}; index {summary.name!r} has {summary.total} images ({summary.seconds:.1f} s)"
    )
