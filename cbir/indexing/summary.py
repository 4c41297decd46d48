"""What one indexing run did: the summary ``cbir index`` prints (and returns as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class IndexSummary:
    """What one indexing run did."""

    name: str
    path: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    total: int = 0
    seconds: float = 0.0
    embedded: int = 0
    #: Files whose content the index already held (moved or copied): their stored vector was reused.
    reused: int = 0
    created: bool = False
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    #: Image files of formats cbir cannot read (HEIC, RAW...), by suffix; not indexed.
    unsupported: dict[str, int] = field(default_factory=dict)
    #: How the FAISS index was rebuilt from the stored vectors this run (nothing re-embedded), if it was.
    vectors_rebuilt: str | None = None
    #: Folders that could not be listed: the indexed images under them were kept, not removed.
    unlisted: list[str] = field(default_factory=list)
    #: Indexed images kept because their folder could not be listed.
    kept_unlisted: int = 0
    #: Skipped files tried again because their reason may have passed (permission, I/O).
    retried: int = 0
    #: Images already indexed that gained local features this run (decoded for them alone, not re-embedded).
    local_features_added: int = 0
    #: Images already indexed without metadata (an older index) that gained it this run (read, not re-embedded).
    metadata_added: int = 0
    #: How this run's RAW files were read: "sidecar" (a JPEG beside it was indexed instead, the RAW left
    #: out), "preview" (its embedded JPEG), "demosaiced" (LibRaw at half size).
    raw_sources: dict[str, int] = field(default_factory=dict)
    #: Videos decoded this run (new or changed), and the frames of them indexed (each an entry).
    videos: int = 0
    frames: int = 0
    #: Videos in the index after the run, and their frames (part of :attr:`total`).
    total_videos: int = 0
    total_frames: int = 0

    def needs_formats_extra(self) -> dict[str, int]:
        """Of :attr:`unsupported`, the suffixes ``pip install 'cbir[formats]'`` would read (HEIC, RAW)."""
        from cbir.images.decode import FORMATS_EXTRA_EXTENSIONS

        return {ext: n for ext, n in self.unsupported.items() if ext in FORMATS_EXTRA_EXTENSIONS}

    def unsupported_note(self) -> str:
        """One clause per kind of file not indexed for its format: those the extra reads, then the rest."""
        extra = self.needs_formats_extra()
        other = {ext: n for ext, n in self.unsupported.items() if ext not in extra}
        notes = []
        if extra:
            counts = ", ".join(f"{n} {ext}" for ext, n in extra.items())
            notes.append(f"{sum(extra.values())} file(s) of a format cbir cannot read without pip install 'cbir[formats]' ({counts})")
        if other:
            notes.append("files of formats cbir cannot read: " + ", ".join(f"{n} {ext}" for ext, n in other.items()))
        return "; ".join(notes)

    def raw_note(self) -> str:
        """How RAW files were read, e.g. ``RAW files: 3 via their JPEG sidecar, 2 embedded preview``; "" if none."""
        labels = {"sidecar": "via their JPEG sidecar", "preview": "embedded preview", "demosaiced": "demosaiced at half size"}
        parts = [f"{self.raw_sources[key]} {label}" for key, label in labels.items() if self.raw_sources.get(key)]
        return "RAW files: " + ", ".join(parts) if parts else ""

    def video_note(self) -> str:
        """``videos: 2 indexed this run (37 frames); the index holds 3 videos (52 frames)``; "" if none."""
        if not (self.videos or self.total_videos):
            return ""
        return (
            f"videos: {self.videos} indexed this run ({self.frames} frames); "
            f"the index holds {self.total_videos} video(s) ({self.total_frames} frames)"
        )

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "created": self.created,
            "added": self.added,
            "updated": self.updated,
            "local_features_added": self.local_features_added,
            "metadata_added": self.metadata_added,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "reused": self.reused,
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped_files],
            "unsupported": dict(self.unsupported),
            "vectors_rebuilt": self.vectors_rebuilt,
            "unlisted": list(self.unlisted),
            "kept_unlisted": self.kept_unlisted,
            "retried": self.retried,
            "needs_formats_extra": self.needs_formats_extra(),
            "raw_sources": {key: self.raw_sources.get(key, 0) for key in ("sidecar", "preview", "demosaiced")},
            "videos": {"indexed": self.videos, "frames": self.frames, "total": self.total_videos, "total_frames": self.total_frames},
        }
