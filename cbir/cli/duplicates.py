"""``cbir duplicates``: groups of near-duplicate images in an index."""

from __future__ import annotations

from typing import Annotated

import typer

from cbir.cli._common import (
    IndexDirOption,
    JsonOption,
    NameOption,
    handle_errors,
    print_json,
    progress_bar,
)


@handle_errors
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

    groups = find_duplicates(name, threshold, index_dir, progress=progress_bar())
    if as_json:
        print_json([g.to_dict() for g in groups])
        return
    if not groups:
        print(f"no near-duplicates at similarity >= {threshold}")
    for n, group in enumerate(groups, start=1):
        print(f"group {n}: {len(group.paths)} images, lowest similarity {group.min_score:.4f}")
        for path in group.paths:
            print(f"  {path}")
