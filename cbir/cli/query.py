"""``cbir query``: search an index by example image."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import (
    AlphaOption,
    EfSearchOption,
    ExpandOption,
    NoExpandOption,
    VerifyOption,
    alpha_setting,
    expand_setting,
    IndexDirOption,
    JsonOption,
    LabelFilterOption,
    NameOption,
    NprobeOption,
    UnderOption,
    handle_errors,
    image_filter,
    CameraOption,
    TakenAfterOption,
    TakenBeforeOption,
    print_json,
    show,
    stderr,
)


@handle_errors
def query(
    images: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...",
            help="Query image file, a folder of query images (each its own query), - (image bytes on standard input) "
            "or an http(s):// URL. Several images are examples of one query; IMAGE:WEIGHT weighs one (default 1).",
            show_default=False,
        ),
    ],
    name: NameOption,
    avoid: Annotated[
        Optional[list[str]],
        typer.Option("--not", help="An example to avoid: its look-alikes rank lower (repeatable; IMAGE:WEIGHT allowed).", show_default=False),
    ] = None,
    under: UnderOption = None,
    label: LabelFilterOption = None,
    taken_after: TakenAfterOption = None,
    taken_before: TakenBeforeOption = None,
    camera: CameraOption = None,
    index_dir: IndexDirOption = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results per query (at most the whole collection).")] = 10,
    exclude_self: Annotated[
        bool, typer.Option("--exclude-self", help="Leave out the query file itself and byte-identical copies of it.")
    ] = False,
    as_json: JsonOption = False,
    paths_only: Annotated[bool, typer.Option("--paths", help="Print only the result paths, one per line.")] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Print only the result paths, each followed by a NUL byte (for xargs -0).")] = False,
    montage: Annotated[
        Optional[Path], typer.Option("--montage", help="Write the query and its top-k as one labelled grid image (PNG/JPEG).", dir_okay=False)
    ] = None,
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Write a self-contained HTML gallery of the queries and their results.", dir_okay=False)
    ] = None,
    nprobe: NprobeOption = None,
    ef_search: EfSearchOption = None,
    expand: ExpandOption = None,
    no_expand: NoExpandOption = False,
    alpha: AlphaOption = None,
    verify: VerifyOption = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="With --montage or --html: draw each verified match's inlier correspondences with the query "
            "(unverified ones say so). Implies --verify.",
        ),
    ] = False,
) -> None:
    """Find the images most similar to IMAGE (or to each image in a folder).

    The query is embedded exactly as the collection was (the index's saved
    extractor config). Output: rank, score (cosine similarity, higher is
    closer; after query expansion, similarity to the expanded query), size,
    label, then the date taken and the camera where the photo says (the date
    falls back to the file's time), and path; a result whose file is gone is
    marked (missing). --json gives {"query", "results": [{"rank", "path",
    "score", "exists", "label", "folder", "size", "mtime", "taken",
    "camera"}]}, a list of those for a folder; with --verify each result adds
    "verified" and "inliers", and the text says "verified (N inliers)".

    Several IMAGEs and --not: one search for the weighted mean of the
    examples minus half the mean of those to avoid (--exclude-self leaves
    the examples out of the results).
    """
    from cbir.errors import UsageError
    from cbir.images.scan import find_images
    from cbir.retrieval.search import Searcher
    from cbir.images.sources import STDIN, is_url

    if sum([as_json, paths_only, null]) > 1:
        raise UsageError("choose one of --json, --paths and -0")
    only = image_filter(under, label, taken_after, taken_before, camera)
    if explain and montage is None and html is None:
        raise UsageError("--explain draws on the pictures: give --montage FILE or --html FILE with it")
    if explain and verify is None:
        from cbir.ann.verify import DEFAULT_VERIFY

        verify = DEFAULT_VERIFY
    rerank = {"expand": expand_setting(expand, no_expand), "alpha": alpha_setting(alpha), "verify": verify}
    examples = _examples(images, avoid or [])
    if examples is not None:
        with Searcher.open(name, index_dir, nprobe=nprobe, ef_search=ef_search, **rerank) as searcher:
            results = [searcher.query_examples(*examples, k, image_filter=only, exclude_examples=exclude_self)]
        _write_pictures(results, name, montage, html, explain)
        _print_results(results, name, False, as_json, paths_only, null)
        return
    image = images[0]
    from_bytes = image == STDIN or is_url(image)
    path = Path(image).expanduser()
    is_folder = not from_bytes and path.is_dir()
    if not from_bytes and not is_folder and not path.exists():
        raise UsageError(f"query image does not exist: {image}")
    if montage is not None and is_folder:
        raise UsageError("--montage takes a single query image, not a folder (--html shows many)")
    paths = find_images(path) if is_folder else [path]
    if is_folder and not paths:
        raise UsageError(f"no image files in {image}")
    images, names = _read_source(image) if from_bytes else (paths, None)
    on_error = (lambda p, exc: stderr.print(f"warning: skipped query {exc}", markup=False)) if is_folder else None
    with Searcher.open(name, index_dir, nprobe=nprobe, ef_search=ef_search, **rerank) as searcher:
        search = searcher.query_excluding_self if exclude_self else searcher.query_many
        results = search(images, k, on_error=on_error, names=names, image_filter=only)
    _write_pictures(results, name, montage, html, explain)
    _print_results(results, name, is_folder, as_json, paths_only, null)


def _write_pictures(results, name: str, montage: Path | None, html: Path | None, explain: bool = False) -> None:
    if montage is not None:
        from cbir.render.explain import write_explained_montage
        from cbir.render.montage import write_montage

        (write_explained_montage if explain else write_montage)(results[0], montage)
        stderr.print(f"montage written to {montage}", markup=False)
    if html is not None:
        from cbir.render.gallery import results_page, write_html

        title = f"cbir: {len(results)} quer{'y' if len(results) == 1 else 'ies'} on index {name!r}"
        write_html(results_page(results, title, explain=explain), html)
        stderr.print(f"gallery written to {html}", markup=False)


def _print_results(results, name: str, is_folder: bool, as_json: bool, paths_only: bool, null: bool) -> None:
    missing = sum(not m.exists for r in results for m in r.results)
    if missing:
        stderr.print(f"note: {missing} result(s) no longer exist on disk; 'cbir prune {name}' drops them", markup=False)
    if as_json:
        print_json([r.to_dict() for r in results] if is_folder else results[0].to_dict())
        return
    if paths_only or null:
        # -0 is for programs (xargs -0): the exact bytes of each name. --paths is
        # one line per name: escaped, so a newline in a name cannot split it.
        out = sys.stdout.buffer if null else None
        for result in results:
            for match in result.results:
                if out is not None:
                    out.write(os.fsencode(match.path) + b"\0")
                else:
                    print(show(match.path))
        return
    for n, result in enumerate(results):
        if is_folder:
            print(("\n" if n else "") + f"query: {show(result.query)}")
        if not result.results:
            print("no image matches", file=sys.stderr)
        width = max((len(show(m.label or "-")) for m in result.results), default=1)
        for match in result.results:
            note = "" if match.exists else "  (missing)"
            if match.verified:
                note += f"  verified ({match.inliers} inliers)"
            about = "  ".join(x for x in ((match.taken or "").replace("T", " "), match.camera or "") if x)
            print(f"{match.rank:>4}  {match.score:.4f}  {_size(match.size):>8}  {show(match.label or '-'):<{width}}  " + (f"[{about}]  " if about else "") + f"{show(match.name)}{note}")


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "-"


def _examples(images: list[str], avoid: list[str]):
    """``(positives, negatives)`` for several IMAGEs, a weight or --not; ``None`` for one plain query."""
    import re

    from cbir.errors import UsageError
    from cbir.images.sources import STDIN, is_url
    from cbir.retrieval.examples import Example

    weighted = re.compile(r"(.+):([0-9]*\.?[0-9]+)")

    def example(text: str) -> Example:
        source, weight = text, 1.0
        if text != STDIN and not is_url(text) and not os.path.exists(os.path.expanduser(text)):
            match = weighted.fullmatch(text)
            if match is None or not (os.path.exists(os.path.expanduser(match[1])) or is_url(match[1]) or match[1] == STDIN):
                raise UsageError(f"query image does not exist: {text}")
            source, weight = match[1], float(match[2])
            if weight <= 0:
                raise UsageError(f"an example's weight must be above 0: {text}")
        if source == STDIN or is_url(source):
            return Example(_read_source(source)[0][0], weight)
        if os.path.isdir(os.path.expanduser(source)):
            raise UsageError(f"{source} is a folder: a folder's images are separate queries; give files as examples")
        return Example(os.path.expanduser(source), weight)

    if len(images) == 1 and not avoid and (images[0] == STDIN or is_url(images[0]) or os.path.exists(os.path.expanduser(images[0]))):
        return None
    if sum(text == STDIN for text in [*images, *avoid]) > 1:
        raise UsageError("standard input (-) can be one example only")
    return [example(text) for text in images], [example(text) for text in avoid]


def _read_source(source: str) -> tuple[list[bytes], list[str]]:
    """The encoded image from standard input or a URL, and what to call it."""
    import sys

    from cbir.errors import ImageError
    from cbir.images.sources import STDIN, fetch_url, read_stream

    label = "<stdin>" if source == STDIN else source
    data = read_stream(sys.stdin.buffer, "standard input") if source == STDIN else fetch_url(source)
    if not data:
        raise ImageError(f"{label} is empty")
    return [data], [label]
