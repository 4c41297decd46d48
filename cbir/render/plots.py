"""Figures of evaluation results, drawn with matplotlib from the reports the library returns.

matplotlib is imported only when a figure is drawn (it is an optional extra:
``pip install 'cbir[plots]'``), with the non-interactive Agg backend, so
plotting works without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from cbir.display import display_path
from cbir.errors import UsageError
from cbir.evaluation.metrics import RECALL_LEVELS, EvaluationReport

FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_plot_path(path: str | os.PathLike) -> Path:
    """Refuse, before any long work, a figure path that cannot be written or has an unknown format."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"cannot plot to {path}: use a file name ending in {', '.join(FIGURE_SUFFIXES)}")
    if path.is_dir():
        raise UsageError(f"cannot plot to {path}: it is a folder")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot plot to {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot plot to {path}: permission denied")
    _pyplot()  # a missing matplotlib is reported now, not after the evaluation
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'cbir[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reports(reports: Mapping[str, EvaluationReport], path: str | os.PathLike, title: str | None = None) -> Path:
    """One figure: interpolated precision-recall curves (one per report) and per-class AP bars.

    Parameters
    ----------
    reports : {name: EvaluationReport}
        Typically one per index, evaluated on the same collection.
    path : path
        Image file to write (format from its suffix).
    """
    path = check_plot_path(path)
    plt = _pyplot()
    classes = sorted({c for report in reports.values() for c in report.per_class})
    width = max(10.0, 5 + 0.45 * len(classes) * max(1, len(reports)) ** 0.5)
    figure, (curve_axes, bar_axes) = plt.subplots(1, 2, figsize=(width, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    for name, report in reports.items():
        curve_axes.plot(RECALL_LEVELS, report.pr_curve, marker=".", label=f"{name} (mAP {report.map:.3f})")
    curve_axes.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02))
    curve_axes.set_title("precision-recall, mean over queries")
    curve_axes.grid(alpha=0.3)
    curve_axes.legend(loc="lower left", fontsize="small")
    _class_bars(bar_axes, reports, classes)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return path


def _class_bars(axes, reports: Mapping[str, EvaluationReport], classes: Sequence[str]) -> None:
    many = len(classes) > 40  # e.g. one "class" per query of a ground-truth file: bars would be unreadable
    shown = classes[:40] if many else classes
    step = 0.8 / max(1, len(reports))
    for n, (name, report) in enumerate(reports.items()):
        positions = [i + (n - (len(reports) - 1) / 2) * step for i in range(len(shown))]
        axes.bar(positions, [report.per_class.get(c, {}).get("map", 0.0) for c in shown], width=step, label=name)
    axes.set_xticks(range(len(shown)))
    axes.set_xticklabels([display_path(c) for c in shown], rotation=60 if len(shown) > 6 else 0, ha="right" if len(shown) > 6 else "center", fontsize="small")
    axes.set(ylabel="AP", ylim=(0, 1.02))
    axes.set_title("AP per class" + (f" (first 40 of {len(classes)})" if many else ""))
    axes.grid(axis="y", alpha=0.3)
    if len(reports) > 1:
        axes.legend(fontsize="small")
