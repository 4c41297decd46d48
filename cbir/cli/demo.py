"""``cbir demo``: a small collection, indexed, queried and evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cbir.cli._common import IndexDirOption, handle_errors, progress_bar


@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo collection and montage.", file_okay=False)] = Path("cbir-demo"),
    index_dir: IndexDirOption = None,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Name of the demo's index; one of that name from an earlier demo is rebuilt, any other is refused.")
    ] = "demo",
) -> None:
    """Build a small collection from photos shipped with scikit-learn, index it, query it, evaluate it.

    Writes the collection under --out, an index named 'demo' (or --name), and
    a montage PNG of one query and its matches.
    """
    from cbir.demo import run_demo

    report = run_demo(out, index_dir, progress=progress_bar(), name=name)
    print(report)
