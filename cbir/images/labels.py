"""Labels of images, for evaluation: from folder names or from a CSV file."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path, PurePath
from typing import Iterable, Mapping, Sequence

from cbir.errors import LabelsError
from cbir.images.scan import normalize_path

logger = logging.getLogger(__name__)

_LABEL_COLUMN_NAMES = ("label", "class", "class_name", "category")


def folder_label(path: str | os.PathLike) -> str:
    """The default label of an image: the name of the folder it is in."""
    return (path if isinstance(path, PurePath) else Path(path)).parent.name


def read_labels_csv(
    csv_path: str | os.PathLike, path_column: str | None = None, label_column: str | None = None
) -> dict[str, str]:
    """``{absolute path: label}`` from a CSV with a header row.

    Parameters
    ----------
    csv_path : path
        Relative image paths in it are relative to the CSV's own folder.
    path_column : str, optional
        Column holding image paths; defaults to the first column.
    label_column : str, optional
        Column holding labels; defaults to the first of ``label``, ``class``,
        ``class_name``, ``category`` that exists, else the last column.
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {csv_path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"labels file {csv_path} is not a readable CSV: {exc}") from None
    if len(columns) < 2:
        raise LabelsError(f"labels file {csv_path} needs a header row with a path column and a label column")
    path_column = path_column or columns[0]
    if label_column is None:
        label_column = next((c for c in columns if c.lower() in _LABEL_COLUMN_NAMES and c != path_column), columns[-1])
    for column in (path_column, label_column):
        if column not in columns:
            raise LabelsError(f"labels file {csv_path} has no column {column!r} (columns: {', '.join(columns)})")
    # Relative rows join the CSV's folder as the indexer joins its root:
    # both normalised once at the top, so symlinked paths agree.
    base = normalize_path(csv_path).parent
    labels: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        raw_path, label = (row.get(path_column) or "").strip(), (row.get(label_column) or "").strip()
        if not raw_path or not label:
            raise LabelsError(f"labels file {csv_path}, line {line}: empty {path_column!r} or {label_column!r}")
        if os.path.isabs(os.path.expanduser(raw_path)):
            key = normalize_path(raw_path)
        else:
            key = os.path.normpath(os.path.join(base, raw_path))
        labels[str(key)] = label
    if not labels:
        raise LabelsError(f"labels file {csv_path} has no rows")
    return labels


def as_label_table(labels: "Mapping[str, str] | str | os.PathLike") -> dict[str, str]:
    """A ``{absolute path: label}`` table, read with :func:`read_labels_csv` if given a path."""
    if isinstance(labels, Mapping):
        return {str(normalize_path(p)): str(label) for p, label in labels.items()}
    return read_labels_csv(labels)


def assign_labels(
    table: Mapping[str, str], paths: Sequence[str], also_known: Iterable[str] = (), source: str = "the labels"
) -> list[str | None]:
    """The label of every path in ``paths``, ``None`` where ``table`` has none.

    One rule for indexing and evaluation: an image the labels do not name has
    no label. It is stored without one, and evaluation never uses it as a
    query nor counts it as relevant (it stays in rankings as a distractor).
    One warning counts such images, and another the rows naming files that
    are neither in ``paths`` nor in ``also_known`` (e.g. skipped files).
    """
    resolved = {os.path.realpath(p): label for p, label in table.items()}
    result: list[str | None] = []
    for path in paths:
        label = table.get(path)
        if label is None:
            label = resolved.get(os.path.realpath(path))
        result.append(label)
    unmatched = [path for path, label in zip(paths, result) if label is None]
    if unmatched:
        logger.warning(
            "%s have no row for %d of %d image(s) (e.g. %s): those have no label, are never a query and never count as relevant",
            source, len(unmatched), len(paths), unmatched[0],
        )
    known = {os.path.realpath(p) for p in paths} | {os.path.realpath(p) for p in also_known}
    extra = [p for p in resolved if p not in known]
    if extra:
        logger.warning("%s list %d file(s) that are not in the index (e.g. %s): ignored", source, len(extra), extra[0])
    return result
