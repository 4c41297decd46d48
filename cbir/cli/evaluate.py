"""``cbir evaluate``: retrieval quality of one or several indexes, under a chosen protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import (
    AlphaOption,
    EfSearchOption,
    ExpandOption,
    IndexDirOption,
    JsonOption,
    LabelColumnOption,
    LabelFilterOption,
    UnderOption,
    image_filter,
    CameraOption,
    TakenAfterOption,
    TakenBeforeOption,
    NoExpandOption,
    NprobeOption,
    PathColumnOption,
    alpha_setting,
    expand_setting,
    VerifyOption,
    handle_errors,
    print_json,
    show,
    progress_bar,
    read_labels,
    stderr,
)

NamesArgument = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="[NAME]...", help="Index to evaluate; several to compare them in one table and figure (or --name).", show_default=False),
]
NamesOption = Annotated[
    Optional[list[str]],
    typer.Option("--name", "-n", help="Index to evaluate; repeat to compare several indexes in one table and figure.", show_default=False),
]


@handle_errors
def evaluate(
    name_arguments: NamesArgument = None,
    names: NamesOption = None,
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
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="Which images query, with labels: 'leave-one-out' (every image) or 'first-of-group' "
            "(the first image, by path, of each label; Holidays style).",
        ),
    ] = "leave-one-out",
    ground_truth: Annotated[
        Optional[Path],
        typer.Option(
            "--ground-truth",
            help="CSV of 'query,relevant[,kind]' rows (kind good/ok/junk, Oxford/Paris style: junk is ignored in the "
            "ranking); queries may be inside or outside the collection; paths relative to the CSV.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    query_folder: Annotated[
        Optional[Path],
        typer.Option(
            "--query-folder",
            help="Queries from outside the collection: every image under this folder queries; its folder name is "
            "its label, relevant = indexed images with that label.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            help="Write a figure (PNG/PDF/SVG): interpolated precision-recall curve (one per index) and AP per class. Needs matplotlib.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    expand: ExpandOption = None,
    no_expand: NoExpandOption = False,
    alpha: AlphaOption = None,
    as_json: JsonOption = False,
    nprobe: NprobeOption = None,
    ef_search: EfSearchOption = None,
    under: UnderOption = None,
    label: LabelFilterOption = None,
    taken_after: TakenAfterOption = None,
    taken_before: TakenBeforeOption = None,
    camera: CameraOption = None,
    verify: VerifyOption = None,
) -> None:
    """Measure retrieval quality: mAP, precision@k and recall@k (k = 1, 5, 10, 20, 50), N-S for groups of 4.

    By default leave-one-out: every image queries all the others, relevant =
    same label. Images are searched the way 'cbir query' searches (query
    expansion included). Queries with no other relevant image are skipped and
    counted. Several indexes give one comparison table (and one figure).
    --under/--label evaluate the part of the collection they let through:
    its images query, and only they are ranked.
    """
    from cbir.errors import UsageError
    from cbir.evaluation.protocols import evaluate_indexes

    names = [*(name_arguments or []), *(n for n in (names or []) if n not in (name_arguments or []))]
    if not names:
        raise UsageError("which index? give its name (NAME or --name NAME; 'cbir list' shows them)")

    if plot is not None:
        from cbir.render.plots import check_plot_path

        check_plot_path(plot)  # fail now, not after a long evaluation
    table = read_labels(labels, path_column, label_column)
    options = dict(
        labels=table,
        progress=progress_bar(),
        protocol=protocol,
        ground_truth=ground_truth,
        query_folder=query_folder,
        expand=expand_setting(expand, no_expand),
        alpha=alpha_setting(alpha),
        nprobe=nprobe,
        ef_search=ef_search,
        image_filter=image_filter(under, label, taken_after, taken_before, camera),
        verify=verify,
    )
    reports, notes = evaluate_indexes(names, index_dir, **options)
    if plot is not None:
        from cbir.render.plots import plot_reports

        plot_reports(reports, plot)
        stderr.print(f"figure written to {plot}", markup=False)
    if as_json:
        entries = [{"name": name, **report.to_dict()} for name, report in reports.items()]
        print_json(entries[0] if len(entries) == 1 else {"indexes": entries, "notes": notes})
        return
    if len(reports) == 1:
        _print_one(*next(iter(reports.items())))
    else:
        _print_table(reports)


def _print_one(name, report) -> None:
    print(f"index {name!r}: {report.n_queries} queries, {report.protocol}")
    print(f"mAP     {report.map:.4f}")
    if report.ns_score is not None:
        print(f"N-S     {report.ns_score:.3f}  (of 4)")
    print("k       " + "  ".join(f"{k:>6}" for k in report.precision))
    print("P@k     " + "  ".join(f"{v:6.4f}" for v in report.precision.values()))
    print("R@k     " + "  ".join(f"{v:6.4f}" for v in report.recall.values()))
    if len(report.per_class) <= 50:
        print("per class:  P@10    mAP     n")
        for label, entry in report.per_class.items():
            print(f"  {show(label):<10} {entry.get('precision@10', 0):.4f}  {entry['map']:.4f}  {entry['n']}")
    if report.queries_without_relevant:
        print(f"({report.queries_without_relevant} queries had no relevant image to find and were left out)")


def _print_table(reports) -> None:
    width = max(8, *(len(name) for name in reports))
    first = next(iter(reports.values()))
    ks = list(first.precision)
    print(f"{'index':<{width}}  queries  mAP     " + "  ".join(f"{'P@' + str(k):>6}" for k in ks) + "    R@10    N-S")
    for name, report in reports.items():
        recall = report.recall.get(10)
        ns = f"{report.ns_score:6.3f}" if report.ns_score is not None else "     -"
        print(
            f"{name:<{width}}  {report.n_queries:>7}  {report.map:.4f}  "
            + "  ".join(f"{v:6.4f}" for v in report.precision.values())
            + (f"  {recall:6.4f}" if recall is not None else "       -")
            + f"  {ns}"
        )
    skipped = {name: r.queries_without_relevant for name, r in reports.items() if r.queries_without_relevant}
    if skipped:
        print("queries left out (no relevant image): " + ", ".join(f"{n} {c}" for n, c in skipped.items()))
