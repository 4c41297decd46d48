"""``cbir prune`` and ``cbir delete``: tidy an index, or remove it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cbir.cli._common import (
    IndexDirOption,
    JsonOption,
    NameArgument,
    OptionalNameOption,
    handle_errors,
    pick_name,
    print_json,
    show,
    progress_bar,
    stderr,
)

def _interactive() -> bool:
    return sys.stdin.isatty()


WaitOption = Annotated[bool, typer.Option("--wait", help="If another process is writing this index, wait instead of failing.")]


@handle_errors
def prune(
    name_argument: NameArgument = None,
    name: OptionalNameOption = None,
    index_dir: IndexDirOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be dropped; change nothing.")] = False,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Drop the entries of files that no longer exist (moved or deleted photos).

    The files still on disk are not touched and not re-read. --json gives
    {"name", "removed": [paths], "dry_run"}.
    """
    from cbir.indexing.maintenance import prune_missing

    name = pick_name(name_argument, name)
    gone = prune_missing(name, index_dir, wait=wait, dry_run=dry_run, progress=progress_bar())
    if as_json:
        print_json({"name": name, "removed": gone, "dry_run": dry_run})
        return
    for path in gone:
        print(show(path))
    verb = "would drop" if dry_run else "dropped"
    stderr.print(f"{verb} {len(gone)} missing file(s) from index {name!r}", markup=False)


@handle_errors
def delete(
    name_argument: NameArgument = None,
    name: OptionalNameOption = None,
    index_dir: IndexDirOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed when not run from a terminal).")] = False,
    wait: WaitOption = False,
) -> None:
    """Delete an index: its folder, catalogue and vectors (the images are not touched)."""
    from cbir.errors import UsageError
    from cbir.indexing.maintenance import delete_index
    from cbir.store.locations import index_path
    from cbir.store.directory import is_index

    name = pick_name(name_argument, name)
    path = index_path(name, index_dir)
    if not yes and is_index(path):
        if not _interactive():
            raise UsageError(f"deleting index {name!r} ({path}) cannot be undone: add --yes to confirm")
        if not typer.confirm(f"delete index {name!r} ({path})?", default=False, err=True):
            raise typer.Exit(code=1)
    deleted = delete_index(name, index_dir, wait=wait)
    stderr.print(f"deleted index {name!r} ({deleted})", markup=False)
