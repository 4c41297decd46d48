"""``cbir duplicates``: byte-identical copies and near-duplicate groups, each with a suggested keeper."""

from __future__ import annotations

import sys
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
    CameraOption,
    TakenAfterOption,
    TakenBeforeOption,
    pick_name,
    print_json,
    show,
    progress_bar,
    stderr,
)
from cbir.errors import UsageError
from cbir.retrieval.thresholds import DEFAULT_THRESHOLDS, MAX_FALSE_RATE

_DEFAULTS = ", ".join(f"{name} {value}" for name, value in DEFAULT_THRESHOLDS.items())
_THRESHOLD_HELP = (
    "Cosine similarity (-1 to 1) at or above which two images count as near-duplicates. "
    f"Default: the index's extractor's own ({_DEFAULTS}), measured by benchmarks/duplicates.py: the lowest similarity "
    f"that only 1 in {round(1 / MAX_FALSE_RATE):,} pairs of distinct Corel-1k photos reach, so it means the same false-alarm "
    "rate on every extractor (docs/duplicates.md: how many re-encoded, resized and cropped copies each finds). "
    "Higher: fewer, surer groups; lower: more edited copies, more look-alikes."
)


@handle_errors
def duplicates(
    name_argument: NameArgument = None,
    name: OptionalNameOption = None,
    index_dir: IndexDirOption = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help=_THRESHOLD_HELP, show_default=False)] = None,
    exact_only: Annotated[bool, typer.Option("--exact", help="Only byte-identical copies (same content hash): no similarity search.")] = False,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print one CSV row per file: group, tier, keep (yes/no), path, width, height, size, reason, min_score.")] = False,
    not_kept: Annotated[
        bool, typer.Option("--not-kept", help="Print only the files the suggested keepers leave out, one per line (with -0: NUL-separated). cbir deletes nothing.")
    ] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="With --not-kept: each path followed by a NUL byte, exactly as stored (for xargs -0).")] = False,
    montage: Annotated[
        Optional[Path], typer.Option("--montage", help="Write the groups as one grid image (PNG/JPEG), a line per group, the keeper framed.", dir_okay=False)
    ] = None,
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Write the groups as a self-contained HTML gallery.", dir_okay=False)
    ] = None,
    under: UnderOption = None,
    label: LabelFilterOption = None,
    taken_after: TakenAfterOption = None,
    taken_before: TakenBeforeOption = None,
    camera: CameraOption = None,
) -> None:
    """List byte-identical copies and groups of near-duplicate images, each with the file to keep.

    Two tiers: exact copies (the same bytes, by content hash) and
    near-duplicates (pairs at or above the threshold, joined into connected
    components; each set of exact copies takes part once). Each group names a
    suggested keeper and why: the highest resolution, then the largest file,
    then the format (RAW, lossless, HEIF/AVIF, WebP, JPEG), then the oldest
    file and the shortest path. cbir never deletes or moves a photo: --not-kept
    -0 lists the others for a script; `cbir serve` has a page to review and
    change the choices. --json gives {"threshold", "exact": [...], "near": [...],
    "not_kept": [...]}, each group with "files", "keep" and "reason".
    """
    from cbir.retrieval.duplicates import find_duplicates
    from cbir.retrieval.keepers import nul_separated, review_csv, review_to_dict

    if sum([as_json, as_csv, not_kept]) > 1:
        raise UsageError("choose one of --json, --csv and --not-kept")
    if null and not not_kept:
        raise UsageError("-0 goes with --not-kept (the files not kept, NUL-separated)")
    if exact_only and threshold is not None:
        raise UsageError("--exact compares content hashes only: it takes no --threshold")
    name = pick_name(name_argument, name)
    found = find_duplicates(
        name, threshold, index_dir, progress=progress_bar(), image_filter=image_filter(under, label, taken_after, taken_before, camera), near=not exact_only
    )
    if montage is not None:
        from cbir.render.montage import make_duplicates_montage, write_image

        write_image(make_duplicates_montage(found.groups), montage)
        stderr.print(f"montage written to {montage}", markup=False)
    if html is not None:
        from cbir.render.gallery import duplicates_page, write_html

        write_html(duplicates_page(found), html)
        stderr.print(f"gallery written to {html}", markup=False)
    if as_json:
        print_json({"index": name, "threshold": found.threshold, "threshold_source": found.threshold_source, **review_to_dict(found.groups)})
    elif as_csv:
        sys.stdout.write(review_csv(found.groups))
    elif not_kept:
        if null:
            sys.stdout.flush()
            sys.stdout.buffer.write(nul_separated(found.not_kept()))
        else:
            for path in found.not_kept():
                print(show(path))
    else:
        _print_text(found)


def _print_text(found) -> None:
    from cbir.retrieval.keepers import group_notes

    groups = found.groups
    gone = set(found.not_kept())
    notes = group_notes(groups, show)
    print(f"exact copies (the same bytes): {len(found.exact)} group(s)")
    if found.threshold is not None:
        print(f"near-duplicates at similarity >= {found.threshold} ({found.threshold_source}): {len(found.near)} group(s)")
    for n, group in enumerate(groups, start=1):
        what = f"{len(group.files)} copies" if group.tier == "exact" else f"{len(group.files)} images, lowest similarity {group.min_score:.4f}"
        unless = " unless its near group keeps another picture" if group.tier == "exact" else ""
        print(f"\n{group.tier} group {n}: {what}; keep {show(group.kept.path)}{unless} ({group.reason})")
        if notes[n - 1]:
            print(f"  {notes[n - 1]}")
        for candidate in group.files:  # the marks say what happens in the end, as --csv, --json and --not-kept do
            mark = "    " if candidate.path in gone else "keep"
            print(f"  {mark}  {show(candidate.name)}")
    if groups:
        print(f"\n{len(gone)} file(s) not kept (cbir duplicates ... --not-kept -0 lists them for a script)")
