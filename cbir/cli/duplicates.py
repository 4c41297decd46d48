"""``cbir duplicates``: groups of near-duplicate images in an index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import (
    IndexDirOption,
    JsonOption,
    LabelFilterOption,
    NameArgument,
    OptionalNameOption,
    UnderOption,
    handle_errors,
    image_filter,
    pick_name,
    print_json,
    show,
    progress_bar,
    stderr,
)


@handle_errors
def duplicates(
    name_argument: NameArgument = None,
    name: OptionalNameOption = None,
    index_dir: IndexDirOption = None,
    threshold: Annotated[
        float,
        typer.Option("--threshold", "-t", help="Cosine similarity (-1 to 1) at or above which two images count as near-duplicates."),
    ] = 0.95,
    as_json: JsonOption = False,
    montage: Annotated[
        Optional[Path], typer.Option("--montage", help="Write the groups as one grid image (PNG/JPEG), a line per group.", dir_okay=False)
    ] = None,
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Write the groups as a self-contained HTML gallery.", dir_okay=False)
    ] = None,
    under: UnderOption = None,
    label: LabelFilterOption = None,
) -> None:
    """List groups of near-duplicate images in an index.

    Pairs at or above the threshold are joined into groups (connected
    components); --json gives [{"size", "min_score", "paths"}], largest first.
    """
    from cbir.retrieval.duplicates import find_duplicates

    name = pick_name(name_argument, name)
    groups = find_duplicates(name, threshold, index_dir, progress=progress_bar(), image_filter=image_filter(under, label))
    if montage is not None:
        from cbir.render.montage import make_duplicates_montage, write_image

        write_image(make_duplicates_montage(groups), montage)
        stderr.print(f"montage written to {montage}", markup=False)
    if html is not None:
        from cbir.render.gallery import duplicates_page, write_html

        write_html(duplicates_page(groups, threshold), html)
        stderr.print(f"gallery written to {html}", markup=False)
    if as_json:
        print_json([g.to_dict() for g in groups])
        return
    if not groups:
        print(f"no near-duplicates at similarity >= {threshold}")
    for n, group in enumerate(groups, start=1):
        print(f"group {n}: {len(group.paths)} images, lowest similarity {group.min_score:.4f}")
        for shown in group.names():
            print(f"  {show(shown)}")
