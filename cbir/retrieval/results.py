"""What a search returns: ranked matches with what the index knows of each (label, folder, size, date, camera,
verification), as objects and as the JSON every output uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


from cbir.display import display_path
from cbir.images.video import describe_frame
from cbir.ann.verify import MIN_INLIERS


@dataclass(frozen=True)
class Match:
    """One search result."""

    rank: int
    path: str
    score: float
    id: int
    label: str | None = None
    #: Whether the file was still on disk at query time (``cbir prune`` drops rows of files that are gone).
    exists: bool = True
    #: When the photo was taken (ISO 8601 local time; EXIF, else the file's time), if the catalogue knows.
    taken: str | None = None
    #: The camera's make and model, if the photo names one.
    camera: str | None = None
    #: The file's size in bytes and modification time (ns since the epoch) when it was indexed.
    size: int | None = None
    mtime_ns: int | None = None
    #: RANSAC inliers of spatial verification (``verify``); ``None`` where the match was not checked.
    inliers: int | None = None
    #: A verified match's inlier keypoints ``(query xy, match xy)``, normalised by each image's longer side.
    correspondences: Any = field(default=None, compare=False, repr=False)
    #: A video's frame: its time in seconds (``path`` is the video's); ``None``: a photo.
    time: float | None = None

    @property
    def name(self) -> str:
        """What the match shows: its path, or ``clip.mp4 @ 01:23`` for a video's frame."""
        return describe_frame(self.path, self.time)

    @property
    def verified(self) -> bool:
        """Whether spatial verification found this image in the query (enough RANSAC inliers)."""
        return self.inliers is not None and self.inliers >= MIN_INLIERS

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    @property
    def mtime(self) -> str | None:
        """The file's modification time as ISO 8601 UTC (``2024-05-01T12:00:00Z``)."""
        return None if self.mtime_ns is None else _iso_utc(self.mtime_ns)

    def to_dict(self) -> dict[str, Any]:
        # JSON (the CLI's, the server's): a name's undecodable bytes written as \xNN.
        out = {
            "rank": self.rank,
            "path": display_path(self.path, controls=False),
            "score": self.score,
            "exists": self.exists,
            "label": None if self.label is None else display_path(self.label, controls=False),
            "folder": display_path(self.folder, controls=False),
            "size": self.size,
            "mtime": self.mtime,
            "taken": self.taken,
            "camera": self.camera,
        }
        if self.inliers is not None:
            out.update(verified=self.verified, inliers=self.inliers)
        if self.time is not None:  # photos' JSON stays as it was
            out["time"] = self.time
        return out



def _iso_utc(mtime_ns: int) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(mtime_ns / 1e9, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")



@dataclass(frozen=True)
class QueryResult:
    """The ranked matches of one query image."""

    query: str
    results: list[Match]

    def to_dict(self) -> dict[str, Any]:
        return {"query": display_path(self.query, controls=False), "results": [m.to_dict() for m in self.results]}
