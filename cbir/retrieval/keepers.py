"""Which file of a group of duplicates to keep, and why: a pure function of what the index knows.

The rule, in order (the first that tells two files apart decides):

1. **the highest resolution** (width x height in pixels; a file whose size is
   not known ranks below one whose size is);
2. **the largest file**: at the same resolution, more bytes mean less
   compression (a JPEG saved at quality 95 over one re-saved at 70);
3. **the format**: camera RAW, then lossless (PNG, TIFF, BMP...), then HEIF/AVIF,
   then WebP, then JPEG, then the rest (:data:`FORMAT_PREFERENCE`);
4. then, for files alike in all of that (byte-identical copies, usually), the
   **oldest file** (a copy is usually made later), then the **shortest path**
   (``IMG_1.jpg`` before ``IMG_1 (1).jpg``), then the path's order.

cbir only suggests: a person may choose another keeper (:func:`apply_choices`),
and what leaves the library is a list of the files not kept, for a person or a
script to act on. cbir never deletes a photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Sequence

from cbir.images.raw import RAW_EXTENSIONS

#: Formats from most to least preferred at equal resolution and file size: (name, suffixes).
FORMAT_PREFERENCE: tuple[tuple[str, frozenset[str]], ...] = (
    ("RAW", RAW_EXTENSIONS),
    ("lossless", frozenset({".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm"})),
    ("HEIF/AVIF", frozenset({".heic", ".heif", ".hif", ".avif", ".jxl"})),
    ("WebP", frozenset({".webp"})),
    ("JPEG", frozenset({".jpg", ".jpeg", ".jpe", ".jp2", ".j2k"})),
)
#: What a person's own choice is called in reports.
CHOSEN_BY_PERSON = "chosen by a person"


@dataclass(frozen=True)
class Candidate:
    """One file of a group, with what the keeper rule looks at (``None``: not known)."""

    id: int
    path: str
    size: int
    mtime_ns: int = 0
    width: int | None = None
    height: int | None = None
    #: The content hash: files with the same one are byte-identical.
    sha256: str | None = None
    #: A video: the time in seconds of its frame in the group (the earliest; ``None``: a photo).
    time: float | None = None

    @property
    def name(self) -> str:
        """The file as shown: its path, ``clip.mp4 @ 01:23`` for a video's frame."""
        return self.path if self.time is None else f"{self.path} @ {_clock(self.time)}"

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width and self.height else None

    @property
    def format_rank(self) -> int:
        """0 for the most preferred format of :data:`FORMAT_PREFERENCE`; unknown formats last."""
        suffix = os.path.splitext(self.path)[1].lower()
        return next((rank for rank, (_, suffixes) in enumerate(FORMAT_PREFERENCE) if suffix in suffixes), len(FORMAT_PREFERENCE))

    @property
    def format_name(self) -> str:
        rank = self.format_rank
        return FORMAT_PREFERENCE[rank][0] if rank < len(FORMAT_PREFERENCE) else (os.path.splitext(self.path)[1].lstrip(".").upper() or "no suffix")

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}" if self.pixels else "unknown resolution"

    def to_dict(self) -> dict:
        out = {"id": self.id, "path": self.path, "size": self.size, "width": self.width, "height": self.height}
        if self.time is not None:  # photos' JSON stays as it was
            out["time"] = self.time
        return out


def _clock(seconds: float) -> str:
    from cbir.images.video import format_time

    return format_time(seconds)


def _rank_key(c: Candidate) -> tuple:
    # Sorted ascending: the keeper comes first.
    return (-(c.pixels or 0), -c.size, c.format_rank, c.mtime_ns, len(c.path), c.path)


def choose_keeper(candidates: Sequence[Candidate]) -> tuple[int, str]:
    """``(position of the suggested keeper in candidates, the reason in words)``; see the module docstring."""
    if not candidates:
        raise ValueError("a group has at least one file")
    order = sorted(range(len(candidates)), key=lambda i: _rank_key(candidates[i]))
    best = candidates[order[0]]
    if len(order) == 1:
        return order[0], "the only file"
    runner = candidates[order[1]]
    return order[0], _reason(best, runner)


def _reason(best: Candidate, runner: Candidate) -> str:
    """Why ``best`` beats ``runner``, the best of the others: the first criterion that tells them apart."""
    if (best.pixels or 0) != (runner.pixels or 0):
        return f"highest resolution: {best.resolution} (next {runner.resolution})"
    if best.size != runner.size:
        return f"largest file at the same resolution: {_size(best.size)} (next {_size(runner.size)})"
    if best.format_rank != runner.format_rank:
        return f"preferred format at the same resolution and size: {best.format_name} over {runner.format_name}"
    if best.mtime_ns != runner.mtime_ns:
        return "alike in resolution, size and format: the oldest file"
    if len(best.path) != len(runner.path):
        return "alike in resolution, size, format and date: the shortest path"
    return "alike in resolution, size, format and date: the first path"


def _size(size: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class ReviewGroup:
    """A group of duplicates under review: its files, the keeper and why.

    ``tier`` is ``"exact"`` (the same bytes) or ``"near"`` (similar images at or
    above the threshold; ``min_score`` is the lowest similarity linking them).
    """

    tier: str
    files: tuple[Candidate, ...]
    keeper: int
    reason: str
    min_score: float = 1.0

    @classmethod
    def suggested(cls, tier: str, files: Sequence[Candidate], min_score: float = 1.0) -> "ReviewGroup":
        files = tuple(sorted(files, key=lambda c: c.path))
        keeper, reason = choose_keeper(files)
        return cls(tier, files, keeper, reason, min_score)

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.files]

    @property
    def kept(self) -> Candidate:
        return self.files[self.keeper]

    @property
    def not_kept(self) -> list[Candidate]:
        return [c for i, c in enumerate(self.files) if i != self.keeper]

    def keeping(self, image_id: int) -> "ReviewGroup":
        """This group with the file ``image_id`` kept instead, as a person chose."""
        position = next((i for i, c in enumerate(self.files) if c.id == image_id), None)
        if position is None:
            raise ValueError(f"image {image_id} is not in this group")
        if position == self.keeper:
            return self
        return replace(self, keeper=position, reason=CHOSEN_BY_PERSON)


def apply_choices(groups: Sequence[ReviewGroup], keep: dict[int, int]) -> list[ReviewGroup]:
    """``groups`` with a person's keepers: ``keep`` maps a group's position to the id to keep instead."""
    for position in keep:
        if not 0 <= position < len(groups):
            raise ValueError(f"there is no group {position + 1} (there are {len(groups)})")
    return [group.keeping(keep[n]) if n in keep else group for n, group in enumerate(groups)]


def files_not_kept(groups: Sequence[ReviewGroup]) -> list[str]:
    """The paths of the files the review does not keep, each once, in group order: the one rule
    every report follows (text, CSV, JSON, the API's exports and the review page).

    The exact tier decides between byte-identical copies; the near tier between
    contents: a near group's file stands for its content, since
    :func:`cbir.retrieval.duplicates.find_duplicates` puts one file of each set of
    copies in the near groups. So a content passed over in its near group goes
    with all its copies (the exact group's keeper too: :func:`group_notes` says
    so), and a kept one stays through its exact group's keeper (whichever file a
    person chose there). A video is never passed over by the near tier: it is a
    different medium from a photo, and one alike frame is not a duplicate video.
    """
    near_kept = {_content(g.kept) for g in groups if g.tier == "near"}
    gone = {_content(c) for g in groups if g.tier == "near" for c in g.not_kept if c.time is None} - near_kept
    seen: dict[str, None] = {}
    for group in groups:
        for position, candidate in enumerate(group.files):
            passed_over = group.tier == "exact" and position != group.keeper
            if passed_over or _content(candidate) in gone:
                seen.setdefault(candidate.path, None)
    return list(seen)


def group_notes(groups: Sequence[ReviewGroup], show=lambda path: path) -> list[str | None]:
    """Per group: ``None`` where its keeper is kept, else why the other tier overrides it.

    An exact group's keeper is kept unless its near group keeps another picture;
    a near group's keeper stays as the copy its exact group keeps.
    """
    gone = set(files_not_kept(groups))
    notes: list[str | None] = []
    for group in groups:
        note = None
        if group.kept.path in gone:
            content = _content(group.kept)
            other = "near" if group.tier == "exact" else "exact"
            where = next(
                ((n, g) for n, g in enumerate(groups, start=1) if g.tier == other and any(_content(c) == content for c in g.files)), None
            )
            if where is not None and group.tier == "exact":
                note = f"not kept after all: near group {where[0]} keeps another picture, {show(where[1].kept.path)}, so no copy here is kept"
            elif where is not None:
                note = f"kept as its byte-identical copy {show(where[1].kept.path)} (exact group {where[0]})"
        notes.append(note)
    return notes


def _content(candidate: Candidate) -> str:
    return candidate.sha256 or "path:" + candidate.path


# -- what a review exports: the same for the CLI, the API and the page ----------------
CSV_COLUMNS = ("group", "tier", "keep", "path", "width", "height", "size", "reason", "min_score")


def group_to_dict(group: ReviewGroup, number: int, show=lambda path: path, gone: frozenset | set = frozenset(), note: str | None = None) -> dict:
    """One group as JSON: its files, the keeper and why; ``show`` turns a stored path into the one shown.

    ``keep``/``keep_id``/``reason``: the group's own choice; ``files[].keep``: whether
    the file is kept in the end (not in ``gone``, the files not kept); ``note``: why
    the two differ (:func:`group_notes`), ``None`` where they agree.
    """
    return {
        "group": number,
        "tier": group.tier,
        "size": len(group.files),
        "min_score": group.min_score,
        "paths": [show(c.path) for c in group.files],
        "files": [{**c.to_dict(), "path": show(c.path), "keep": c.path not in gone} for c in group.files],
        "keep": show(group.kept.path),
        "keep_id": group.kept.id,
        "reason": group.reason,
        "note": note,
    }


def review_to_dict(groups: Sequence[ReviewGroup], show=lambda path: path) -> dict:
    """``{"exact": [...], "near": [...], "not_kept": [paths]}``: groups numbered across both tiers, exact first."""
    gone = set(files_not_kept(groups))
    notes = group_notes(groups, show)
    dicts = [group_to_dict(g, n, show, gone, notes[n - 1]) for n, g in enumerate(groups, start=1)]
    return {
        "exact": [d for d in dicts if d["tier"] == "exact"],
        "near": [d for d in dicts if d["tier"] == "near"],
        "not_kept": [show(p) for p in files_not_kept(groups)],  # the same rule as files[].keep
    }


def review_csv(groups: Sequence[ReviewGroup], show=lambda path: path) -> str:
    """A CSV of every file of every group: one row each, ``keep`` yes/no (kept in the end), the reason on
    the group keeper's row, with its note where the other tier overrides it (:func:`group_notes`)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    gone = set(files_not_kept(groups))
    notes = group_notes(groups, show)
    for number, group in enumerate(groups, start=1):
        for position, c in enumerate(group.files):
            keep = c.path not in gone
            reason = "; ".join(filter(None, (group.reason, notes[number - 1]))) if position == group.keeper else ""
            writer.writerow([number, group.tier, "yes" if keep else "no", show(c.path), c.width or "", c.height or "", c.size, reason, group.min_score])
    return out.getvalue()


def nul_separated(paths: Sequence[str]) -> bytes:
    """Paths as a script reads them with ``xargs -0``: each name's exact bytes, each ended by NUL."""
    return b"".join(os.fsencode(path) + b"\0" for path in paths)
