"""Ground-truth files for evaluation: ``query,relevant[,kind]`` rows, Oxford/Paris style.

``kind`` is ``good`` (the default), ``ok`` or ``junk``: good and ok images are
relevant to the query, junk images are left out of its ranking (neither
right nor wrong), as in the Oxford and Paris buildings protocols.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cbir.errors import LabelsError

GROUND_TRUTH_KINDS = ("good", "ok", "junk")


@dataclass
class GroundTruth:
    """Per query (absolute path): the relevant (good/ok) and junk images."""

    relevant: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    junk: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    queries: list[str] = field(default_factory=list)


def read_ground_truth(csv_path: str | os.PathLike) -> GroundTruth:
    """Read ``query,relevant[,kind]`` rows (optional header; kind ``good`` (default), ``ok`` or ``junk``).

    Paths are relative to the CSV's folder unless absolute.

    Raises
    ------
    LabelsError
        Unreadable file, a row with fewer than two fields, or an unknown kind.
    """
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    truth = GroundTruth()
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise LabelsError(f"cannot read ground truth {csv_path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"ground truth {csv_path} is not a readable CSV: {exc}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["query", "relevant"]:
        rows = rows[1:]
        start = 2
    else:
        start = 1
    for line, row in enumerate(rows, start=start):
        if not row or not "".join(row).strip():
            continue
        fields = [c.strip() for c in row]
        kind = (fields[2] if len(fields) > 2 and fields[2] else "good").lower()
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise LabelsError(f"ground truth {csv_path}, line {line}: expected 'query,relevant[,kind]'")
        if kind not in GROUND_TRUTH_KINDS:
            raise LabelsError(f"ground truth {csv_path}, line {line}: kind {kind!r} is not one of {', '.join(GROUND_TRUTH_KINDS)}")
        query, image = (_resolve(base, p) for p in fields[:2])
        if query not in truth.relevant and query not in truth.junk:
            truth.queries.append(query)
        (truth.junk if kind == "junk" else truth.relevant)[query].add(image)
    if not truth.queries:
        raise LabelsError(f"ground truth {csv_path} has no rows")
    return truth


def _resolve(base: Path, raw: str) -> str:
    # The spelling the catalogue stores (cbir.images.decode.normalize_path); relative to the CSV's folder.
    from cbir.images.scan import normalize_path

    if os.path.isabs(os.path.expanduser(raw)):
        return str(normalize_path(raw))
    return os.path.normpath(os.path.join(base, raw))
