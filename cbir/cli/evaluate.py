"""``cbir evaluate``: retrieval quality of an index on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import (
    EfSearchOption,
    IndexDirOption,
    JsonOption,
    LabelColumnOption,
    NameOption,
    NprobeOption,
    PathColumnOption,
    handle_errors,
    print_json,
    progress_bar,
    read_labels,
)


@handle_errors
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

    table = read_labels(labels, path_column, label_column)
    report = evaluate_index(name, index_dir, labels=table, progress=progress_bar(), nprobe=nprobe, ef_search=ef_search)
    if as_json:
        print_json(report.to_dict())
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
