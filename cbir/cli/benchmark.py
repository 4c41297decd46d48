"""``cbir benchmark``: several configurations on one labelled folder, one comparison table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from cbir.cli._common import JsonOption, handle_errors, print_json, progress_bar, stderr


@handle_errors
def benchmark(
    spec: Annotated[Path, typer.Argument(help="JSON spec: folder, optional labels, configs (described above).", dir_okay=False, show_default=False)],
    index_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--index-dir",
            help="Keep the indexes built here, one per config name. (default: a temporary folder, removed at the end)",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write a figure: precision-recall curve per config and AP per class.", dir_okay=False, show_default=False),
    ] = None,
    names: Annotated[
        Optional[list[str]],
        typer.Option(
            "--name", "-n", help="Run only the config of this name (repeatable); its index, kept with --index-dir, has that name too. (default: every config)",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Index one labelled folder with several configurations and compare them in one table.

    Quality (leave-one-out mAP, P@10, N-S for groups of 4), indexing time,
    median query latency (decode, embed, search, re-ranking) and index size.
    The spec is JSON, paths relative to it:

    {"folder": "photos/", "labels": "labels.csv", "queries": 50, "configs": [
    {"name": "colour"}, {"name": "cnn", "backbone": "mobilenet", "weights": "w.h5"},
    {"name": "cnn-pca64", "backbone": "mobilenet", "weights": "w.h5", "pca": 64},
    {"name": "cnn-rerank", "backbone": "mobilenet", "weights": "w.h5", "dba": 2, "expand": 2}]}

    A config takes cbir index's options by their Python names (extractor,
    backbone, bins, pca, index_type, dba...) and expand/alpha for queries;
    "dba": null or "expand": null turns that re-ranking off.
    """
    from cbir.evaluation.benchmark import load_spec, run_benchmark, select_configs

    if plot is not None:
        from cbir.render.plots import check_plot_path

        check_plot_path(plot)
    checked = select_configs(load_spec(spec), names or [])
    with tempfile.TemporaryDirectory(prefix="cbir-benchmark-") as temporary:
        rows = run_benchmark(checked, index_dir or temporary, progress=progress_bar())
    if plot is not None:
        from cbir.render.plots import plot_reports

        plot_reports({row.name: row.report for row in rows}, plot, title=f"{Path(checked['folder']).name}")
        stderr.print(f"figure written to {plot}", markup=False)
    if as_json:
        print_json({"folder": checked["folder"], "configs": [row.to_dict() for row in rows]})
        return
    width = max(6, *(len(row.name) for row in rows))
    print(f"{'config':<{width}}  {'mAP':>6}  {'P@10':>6}  {'N-S':>5}  {'index s':>8}  {'query ms':>8}  {'size MB':>8}  description")
    for row in rows:
        ns = f"{row.ns_score:5.2f}" if row.ns_score is not None else "    -"
        print(
            f"{row.name:<{width}}  {row.map:6.4f}  {row.precision_at_10:6.4f}  {ns}  {row.index_seconds:8.1f}  "
            f"{row.query_ms:8.1f}  {row.size_mb:8.2f}  {row.description}"
        )
