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
        }
