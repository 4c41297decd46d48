"""The record of a training run (``history.json``) and its loss curves (``loss.png``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from cbir.fileio import atomic_path, write_json_atomic

logger = logging.getLogger("cbir.features.autoencoder")

#: Parameters and per-epoch losses of the training run.
HISTORY_FILE = "history.json"
#: Training and validation loss curves.
LOSS_PLOT_FILE = "loss.png"
HISTORY_VERSION = 1


def read_history(path: Path) -> dict | None:
    """The training record at ``path``, or ``None`` if there is none (or it is unreadable)."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable training history %s: %s", path, exc)
        return None
    if not isinstance(record, dict) or record.get("version") != HISTORY_VERSION:
        logger.warning("ignoring training history %s of an unknown version", path)
        return None
    return record


def write_history(record: dict, directory: Path) -> None:
    """Write ``history.json`` atomically and redraw ``loss.png``."""
    write_json_atomic(Path(directory) / HISTORY_FILE, record, indent=1, sort_keys=False)
    if record["epochs"]:
        try:
            figure = plot_losses(record["epochs"])
        except ImportError:
            logger.warning("matplotlib is not installed: no %s (pip install matplotlib)", LOSS_PLOT_FILE)
            return
        with atomic_path(Path(directory) / LOSS_PLOT_FILE) as temporary:
            figure.savefig(temporary, format="png", dpi=100)


def plot_losses(epochs: Sequence[dict[str, Any]]):
    """Training and validation loss per epoch, log scale, as a Matplotlib figure.

    Parameters
    ----------
    epochs : sequence of dict
        Entries of a history's ``"epochs"``: ``epoch``, ``loss`` and
        optionally ``val_loss``.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot (no global state, any thread); save it with
        ``figure.savefig(path)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    for label, key in (("training", "loss"), ("validation", "val_loss")):
        points = [(e["epoch"], e[key]) for e in epochs if key in e]
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3, label=label)
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("MSE (log scale)")
    axes.set_title("autoencoder loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return figure
