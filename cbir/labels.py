"""Labels of images, for evaluation: from folder names or from a CSV file."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from cbir.errors import LabelsError

_LABEL_COLUMN_NAMES = ("label", "class", "class_name", "category")


def folder_label(path: str | os.PathLike) -> str:
    """The default label of an image: the name of the folder it is in."""
    return Path(path).parent.name


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
    base = csv_path.resolve().parent
    labels: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        raw_path, label = (row.get(path_column) or "").strip(), (row.get(label_column) or "").strip()
        if not raw_path or not label:
            raise LabelsError(f"labels file {csv_path}, line {line}: empty {path_column!r} or {label_column!r}")
        labels[os.path.normpath(os.path.join(base, raw_path))] = label
    if not labels:
        raise LabelsError(f"labels file {csv_path} has no rows")
    return labels


def as_label_table(labels: "Mapping[str, str] | str | os.PathLike") -> dict[str, str]:
    """A ``{absolute path: label}`` table, read with :func:`read_labels_csv` if given a path."""
    if isinstance(labels, Mapping):
        return {os.path.abspath(p): str(label) for p, label in labels.items()}
    return read_labels_csv(labels)


def match_labels(
    labels: dict[str, str], indexed_paths: Sequence[str], skipped_paths: Iterable[str] = ()
) -> list[str]:
    """The label of every indexed path, in order, refusing a labels file that does not fit.

    Raises
    ------
    LabelsError
        If an indexed image has no label (missing rows), or the labels name
        files that are neither indexed nor skipped (extra rows).
    """
    resolved = {os.path.realpath(p): label for p, label in labels.items()}
    result, missing = [], []
    for path in indexed_paths:
        label = labels.get(path)
        if label is None:
            label = resolved.get(os.path.realpath(path))
        if label is None:
            missing.append(path)
        else:
            result.append(label)
    if missing:
        raise LabelsError(f"labels have no row for {len(missing)} indexed image(s), e.g. {missing[0]}")
    known = {os.path.realpath(p) for p in indexed_paths} | {os.path.realpath(p) for p in skipped_paths}
    extra = [p for p in resolved if p not in known]
    if extra:
        raise LabelsError(f"labels list {len(extra)} file(s) that are not in the index, e.g. {extra[0]}")
    return result
