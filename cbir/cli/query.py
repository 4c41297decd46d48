"""``cbir query``: search an index by example image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import (
    AlphaOption,
    EfSearchOption,
    ExpandOption,
    NoExpandOption,
    alpha_setting,
    expand_setting,
    IndexDirOption,
    JsonOption,
    NameOption,
    NprobeOption,
    handle_errors,
    print_json,
    stderr,
)


@handle_errors
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
    expand: ExpandOption = None,
    no_expand: NoExpandOption = False,
    alpha: AlphaOption = None,
) -> None:
    """Find the images most similar to IMAGE (or to each image in a folder).

    The query is embedded exactly as the collection was (the index's saved
    extractor config). Output: rank, score (cosine similarity, higher is
    closer; after query expansion, similarity to the expanded query) and path; --json gives {"query", "results": [{"rank", "path", "score"}]},
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
    rerank = {"expand": expand_setting(expand, no_expand), "alpha": alpha_setting(alpha)}
    with Searcher.open(name, index_dir, nprobe=nprobe, ef_search=ef_search, **rerank) as searcher:
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
        print_json([r.to_dict() for r in results] if is_folder else results[0].to_dict())
        return
    for n, result in enumerate(results):
        if is_folder:
            print(("\n" if n else "") + f"query: {result.query}")
        for match in result.results:
            print(f"{match.rank:>4}  {match.score:.4f}  {match.path}")
