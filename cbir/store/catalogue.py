"""The catalogue: which file each vector came from. The only module that speaks SQL.

One SQLite database per index holds, for every indexed image, its path, size,
modification time, content hash, label and vector, and for every file that
could not be read, the reason. A video is several rows, one per indexed frame
(its time in ``frame_time``, its path ``VIDEO/@TIME``: :func:`frame_key`). Vectors live here too, so every batch of
embeddings is committed together with its rows in one transaction: a run
killed at any point keeps exactly what was committed, and the FAISS file can
always be rebuilt from the catalogue.

File names are stored exactly. A name that is valid UTF-8 is ``TEXT``; one
that is not (``café.jpg`` in Latin-1, which Python hands over with surrogate
escapes) is stored as a ``BLOB`` of its bytes, so the API takes and returns
``str`` as :func:`os.fsdecode` gives it and nothing is lost or refused.
SQLite orders every ``TEXT`` before every ``BLOB``, so a prefix query asks
both ranges (:func:`_prefix_clause`).

Ids are never reused (``AUTOINCREMENT``), so an id in an older FAISS file can
never point at a different image. Ids removed since the FAISS file was last
written are listed in ``pending_removals`` until it is written again.

At ~790 lines it is over the usual size on purpose: it is the one module that
speaks SQL (rclip's rule), so every statement, its schema and migrations stay
in one place.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from cbir.errors import IndexCorruptError, disk_full_error, is_disk_full
from cbir.images.video import is_video_path

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
#: A reader (queries, the server) opens a catalogue this old without upgrading it: versions 2,
#: 3 and 4 only added photo metadata, local features and video frames, which such a catalogue has none of.
#: Writers always upgrade.
_OLDEST_READABLE = 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # SQLite's integer range: no id lies outside it
#: Parameters per ``IN (...)`` query: well under SQLite's limit.
_CHUNK = 500


def _sqlite_ids(ids) -> list[int]:
    """``ids`` as ints, without those outside SQLite's range (it raises OverflowError; no row has one)."""
    return [i for i in map(int, ids) if _INT64_MIN <= i <= _INT64_MAX]

# Ordered migrations: MIGRATIONS[i] takes a database from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        label TEXT,
        vector BLOB NOT NULL
    );
    CREATE TABLE skipped (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE pending_removals (id INTEGER PRIMARY KEY);
    """,
    # 2: what each photo says about itself, read once at index time. A table of its own: rows
    # indexed before it have none, and GPS stays out of every query that does not ask for it.
    """
    CREATE TABLE image_metadata (
        id INTEGER PRIMARY KEY,
        width INTEGER,
        height INTEGER,
        taken TEXT,
        taken_from TEXT,
        camera_make TEXT,
        camera_model TEXT,
        gps_lat REAL,
        gps_lon REAL
    );
    """,
    # 3: local features for spatial verification, one packed record per image (cbir.features.local).
    """
    CREATE TABLE local_features (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
    """,
    # 4: video frames. A frame is a row like a photo's, with the video's size, time and hash, its
    # time in seconds here (NULL: a photo) and the path ``VIDEO/@TIME`` (:func:`frame_key`): unique,
    # below the video as if it were a folder, so every prefix query takes a video's frames along,
    # and no file can have that name (the video is a file, not a folder). ADD COLUMN rewrites nothing.
    """
    ALTER TABLE images ADD COLUMN frame_time REAL;
    """,
]

#: Between a video's path and a frame's time in the frame's stored path.
_FRAME_MARK = "/@"


def frame_key(path: str, time_s: float | None) -> str:
    """The stored path of an entry: the file's own for a photo, ``VIDEO/@SECONDS`` for a video's frame."""
    # Zero-padded: frames sort by time wherever rows are listed by path (a browsed page).
    return path if time_s is None else f"{path}{_FRAME_MARK}{time_s:012.3f}"


def _frames_range(path: str) -> tuple:
    """``(lowest, above highest)`` stored paths of the frames of the video ``path``."""
    return _sql(path + _FRAME_MARK), _sql(path + _FRAME_MARK[:-1] + chr(ord(_FRAME_MARK[-1]) + 1))


@dataclass(frozen=True)
class ImageRow:
    """One indexed image (without its vector)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    label: str | None
    #: A video's frame: its time in seconds (``path`` is the video's); ``None``: a photo.
    time: float | None = None

    @property
    def key(self) -> str:
        """The entry's stored path, unique in the catalogue (a frame's names its time)."""
        return frame_key(self.path, self.time)


@dataclass(frozen=True)
class ImageMetadata:
    """What a photo says about itself (``None``: not known)."""

    width: int | None = None
    height: int | None = None
    #: ISO 8601 local time: the EXIF date taken, else the file's modification time.
    taken: str | None = None
    #: ``"exif"`` or ``"mtime"``: where ``taken`` came from.
    taken_from: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    #: Location, decimal degrees: private, read only by :meth:`Catalogue.metadata` with ``gps=True``.
    gps_lat: float | None = None
    gps_lon: float | None = None

    @property
    def camera(self) -> str | None:
        """Make and model as one name ("Canon Canon EOS R5" shown as "Canon EOS R5")."""
        make, model = (self.camera_make or "").strip(), (self.camera_model or "").strip()
        if make and model.lower().startswith(make.split()[0].lower()):
            return model
        return " ".join(p for p in (make, model) if p) or None


_METADATA_COLUMNS = ("width", "height", "taken", "taken_from", "camera_make", "camera_model", "gps_lat", "gps_lon")


@dataclass(frozen=True)
class NewImage:
    """What the indexer commits for one embedded file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    label: str | None
    vector: np.ndarray
    metadata: ImageMetadata | None = None
    #: Packed local features (:mod:`cbir.features.local`), committed with the row; ``None``: none.
    local_features: bytes | None = None
    #: A video's frame: its time in seconds (``path`` is the video's); ``None``: a photo.
    time: float | None = None

    @property
    def key(self) -> str:
        return frame_key(self.path, self.time)


@dataclass(frozen=True)
class ImageFilter:
    """Which indexed images a search may return: every criterion given must hold.

    The one place a criterion is defined: a field here, its SQL in
    :meth:`where` and its meaning in :meth:`matches`; the CLI, the API and
    the page pass this object along unchanged.

    Dates compare an image's date taken (EXIF), else its file's modification
    time (local time, as :class:`ImageMetadata` stores it; also for rows
    without metadata). Both ends are inclusive: a bare date ``2023-07-31`` as
    ``taken_before`` keeps all of that day. The camera is a case-insensitive
    substring of "make model" (``canon``, ``EOS R5``, ``iphone 12``).
    """

    #: A folder: images at or below it (a path prefix on whole folder names), as stored (absolute).
    under: str | None = None
    #: An exact label.
    label: str | None = None
    #: ISO 8601 date or date and time (``2023-07-01``, ``2023-07-01T18:00``): taken at or after it.
    taken_after: str | None = None
    #: ISO 8601 date or date and time: taken at or before it (a bare date: any time that day).
    taken_before: str | None = None
    #: Part of the camera's make and model, any letter case.
    camera: str | None = None

    def __post_init__(self) -> None:
        for name in ("taken_after", "taken_before"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, iso_moment(value, name))
        if self.camera is not None and not self.camera.strip():
            object.__setattr__(self, "camera", None)

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("under", "label", "taken_after", "taken_before", "camera"))

    @property
    def needs_metadata(self) -> bool:
        return self.taken_after is not None or self.taken_before is not None or self.camera is not None

    def where(self, metadata: bool = True) -> tuple[str, tuple]:
        """A SQL condition on ``images`` and its arguments (``metadata=False``: a catalogue without that table)."""
        clauses, args = [], []
        if self.under is not None:
            clause, prefix_args = _prefix_clause(self.under)
            clauses.append("(" + clause.removeprefix("WHERE ") + ")")
            args.extend(prefix_args)
        if self.label is not None:
            clauses.append("label = ?")
            args.append(_sql(self.label))
        if self.taken_after is not None or self.taken_before is not None:
            taken = _TAKEN_SQL if metadata else _MTIME_SQL
            if self.taken_after is not None:
                clauses.append(f"{taken} >= ?")
                args.append(self.taken_after)
            if self.taken_before is not None:
                clauses.append(f"{taken} {_upper(self.taken_before)[0]} ?")
                args.append(_upper(self.taken_before)[1])
        if self.camera is not None:
            if metadata:
                clauses.append(f"instr(lower({_CAMERA_SQL}), lower(?)) > 0")
                args.append(self.camera.strip())
            else:
                clauses.append("0")
        return (" AND ".join(clauses) or "1"), tuple(args)

    def matches(self, row: "ImageRow", metadata: "ImageMetadata | None" = None) -> bool:
        """Whether ``row`` (with its ``metadata``, if it has some) passes: the same test as :meth:`where`."""
        if self.label is not None and row.label != self.label:
            return False
        if self.under is not None:
            root = self.under.rstrip("/\\") or self.under
            if row.path != root and not row.path.startswith(root.rstrip("/") + "/"):
                return False
        if self.taken_after is not None or self.taken_before is not None:
            taken = (metadata.taken if metadata is not None else None) or local_iso(row.mtime_ns)
            if self.taken_after is not None and taken < self.taken_after:
                return False
            if self.taken_before is not None:
                op, bound = _upper(self.taken_before)
                if (taken >= bound) if op == "<" else (taken > bound):
                    return False
        if self.camera is not None:
            camera = " ".join(x or "" for x in (metadata.camera_make, metadata.camera_model)) if metadata else ""
            if self.camera.strip().lower() not in camera.lower():
                return False
        return True

    def describe(self) -> str:
        """The filter in words, for messages (``under /photos/2019, label 'beach'``)."""
        parts = ([f"under {self.under}"] if self.under is not None else []) + ([f"label {self.label!r}"] if self.label is not None else [])
        if self.taken_after is not None:
            parts.append(f"taken after {self.taken_after}")
        if self.taken_before is not None:
            parts.append(f"taken before {self.taken_before}")
        if self.camera is not None:
            parts.append(f"camera {self.camera!r}")
        return ", ".join(parts) or "no filter"


#: An image's date for filters: its metadata's (EXIF, else mtime at index time), else its row's mtime.
_MTIME_SQL = "strftime('%Y-%m-%dT%H:%M:%S', images.mtime_ns / 1000000000, 'unixepoch', 'localtime')"
_TAKEN_SQL = f"COALESCE((SELECT taken FROM image_metadata m WHERE m.id = images.id), {_MTIME_SQL})"
_CAMERA_SQL = "(SELECT COALESCE(camera_make, '') || ' ' || COALESCE(camera_model, '') FROM image_metadata m WHERE m.id = images.id)"


def iso_moment(value: str, what: str = "date") -> str:
    """``value`` as the catalogue writes dates (``2023-07-14`` or ``2023-07-14T10:20:30``), or :class:`UsageError`."""
    import datetime

    from cbir.errors import UsageError

    text = str(value).strip()
    try:
        if len(text) == 10:
            return datetime.date.fromisoformat(text).isoformat()
        return datetime.datetime.fromisoformat(text).replace(tzinfo=None).isoformat(timespec="seconds")
    except ValueError:
        raise UsageError(f"{what} takes an ISO date (2023-07-14) or date and time (2023-07-14T10:20), got {text[:40]!r}") from None


def local_iso(mtime_ns: int) -> str:
    """A modification time as the catalogue's dates are written (local time, to the second)."""
    import datetime

    return datetime.datetime.fromtimestamp(mtime_ns / 1e9).isoformat(timespec="seconds")


def _upper(bound: str) -> tuple[str, str]:
    """``taken_before``'s comparison: a bare date keeps that whole day (``< next day``), a time keeps up to it."""
    import datetime

    if len(bound) == 10:
        return "<", (datetime.date.fromisoformat(bound) + datetime.timedelta(days=1)).isoformat()
    return "<=", bound


class Catalogue:
    """SQLite catalogue of one index. Use as a context manager or call :meth:`close`.

    Parameters
    ----------
    path : Path
        The database file.
    create : bool
        Create the file and its schema if missing; otherwise a missing file
        is an :class:`~cbir.errors.IndexCorruptError`.
    read_only : bool
        Open for reading only: SQLite refuses every write through this
        connection. In a folder this process cannot write (a read-only mount,
        an archive, another user's index) the database is opened as immutable,
        since SQLite cannot create the ``-shm`` file WAL readers need there.
    check_same_thread : bool
        ``False`` lets several threads share the connection; the caller then
        serialises its use (see :class:`cbir.retrieval.search.Searcher`).
    """

    def __init__(self, path: Path, create: bool = False, read_only: bool = False, check_same_thread: bool = True):
        self.path = Path(path)
        self.read_only = read_only
        if not create and not self.path.is_file():
            raise IndexCorruptError(f"catalogue {self.path} is missing")
        if create and read_only:
            raise ValueError("a catalogue cannot be created read-only")
        try:
            if read_only:
                self._db = self._connect_read_only(check_same_thread)
            else:
                self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=check_same_thread)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc):
                raise disk_full_error(f"the catalogue {self.path}") from None
            raise IndexCorruptError(f"catalogue {self.path} is unreadable: {exc}") from None

    def _connect_read_only(self, check_same_thread: bool) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=check_same_thread)
        try:
            db.execute("PRAGMA user_version").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            if os.access(self.path.parent, os.W_OK):
                raise
        # A WAL database in a folder this process cannot write: SQLite cannot
        # create the -shm file readers share, so read the file as immutable
        # (no -shm, no locks). A writer closing cleanly checkpoints everything
        # into the file, so an archived or shared index reads complete.
        return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=check_same_thread)

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        if not self.read_only:
            self._settle()
        self._db.close()

    def _settle(self) -> None:
        """At a writer's close: every commit into the database file itself.

        A writer works in WAL mode (readers never block it, nor it them); its
        commits sit in ``-wal`` until a checkpoint, which SQLite runs by itself
        only when the last connection closes, never while ``cbir serve`` holds
        one open. So the writer checkpoints (waiting a little for readers to
        finish their current read): once no writer runs, ``catalogue.sqlite``
        alone is complete and a copy without ``-wal`` loses nothing. The
        database stays in WAL mode: a rollback journal would let one long read
        (``cbir duplicates``) lock every writer out. Best effort: a failure
        here loses nothing (the WAL stays, and is replayed).
        """
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                logger.info("catalogue %s: a reader kept the checkpoint from finishing; the -wal file holds the rest", self.path)
        except sqlite3.Error:
            pass

    def __enter__(self) -> "Catalogue":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise IndexCorruptError(
                f"catalogue {self.path} has schema version {version}, newer than this cbir understands "
                f"({SCHEMA_VERSION}); upgrade cbir"
            )
        self.schema_version = version
        if version == 0 and self.read_only:
            raise IndexCorruptError(
                f"catalogue {self.path} holds no tables: a copy of an index made while a run was writing "
                f"needs its {self.path.name}-wal file too (see README); otherwise run cbir index again"
            )
        if version < SCHEMA_VERSION and self.read_only:
            if version >= _OLDEST_READABLE:
                return  # read as it is: what later versions add (metadata) is simply absent
            raise IndexCorruptError(
                f"catalogue {self.path} has schema version {version}, older than this cbir's ({SCHEMA_VERSION}); "
                "run cbir index on it once (with write access) to upgrade it"
            )
        self.schema_version = SCHEMA_VERSION
        for target in range(version, SCHEMA_VERSION):
            # executescript commits whatever is open first, so the script carries its own transaction.
            self._db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[target]}; PRAGMA user_version = {target + 1}; COMMIT;")

    def transaction(self) -> "_Transaction":
        """``with catalogue.transaction():`` groups writes into one atomic commit."""
        return _Transaction(self._db, "BEGIN IMMEDIATE", where=f"the catalogue {self.path}")

    def snapshot(self) -> "_Transaction":
        """``with catalogue.snapshot():`` reads see one committed state, without blocking writers.

        Inside another transaction or snapshot it joins that one.
        """
        return _Transaction(self._db, "BEGIN DEFERRED", join=True)

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the database."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- meta --------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    # -- images ------------------------------------------------------------
    def count_images(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def all_ids(self) -> np.ndarray:
        """Every image id, ascending (int64; 80 MB at 10M, where full rows would take gigabytes)."""
        cursor = self._db.execute("SELECT id FROM images ORDER BY id")
        return np.fromiter((r[0] for r in cursor), dtype=np.int64)

    def count_skipped(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM skipped").fetchone()[0]

    def add_images(self, images: Sequence[NewImage], dim: int, replace: bool = True) -> None:
        """Insert embedded images, replacing rows of the same file (which get new ids).

        A video's frames replace all of its frames: they come in one batch
        (see :func:`cbir.compute.loader.batched`). ``replace=False``: the caller
        knows no row or skip record has these paths (a new index's first run),
        so none is looked for.
        """
        rows = []
        for image in images:
            vector = np.ascontiguousarray(image.vector, dtype=np.float32)
            if vector.shape != (dim,):
                raise ValueError(f"vector of shape {vector.shape} for an index of dimension {dim}")
            # The row's own buffer: SQLite copies it once, no bytes object in between.
            rows.append(
                (_sql(image.key), image.size, image.mtime_ns, image.sha256, _sql(image.label), memoryview(vector), image.time)
            )
        if replace:
            paths = list(dict.fromkeys(image.path for image in images))
            self.remove_ids(self._ids_of_files(paths))
            self._db.executemany("DELETE FROM skipped WHERE path = ?", [(_sql(p),) for p in paths])
        self._db.executemany(
            "INSERT INTO images (path, size, mtime_ns, sha256, label, vector, frame_time) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )
        self._add_metadata([(image.key, image.metadata) for image in images if image.metadata is not None])
        local = [(image.local_features, _sql(image.key)) for image in images if image.local_features]
        if local:  # in the same transaction as the rows: a killed run keeps both or neither
            self._db.executemany("INSERT OR REPLACE INTO local_features (id, data) SELECT id, ? FROM images WHERE path = ?", local)

    def _add_metadata(self, pairs: Sequence[tuple[str, ImageMetadata]]) -> None:
        if not pairs:
            return
        ids: dict = {}  # by the path as stored (text, or bytes for a name that is not UTF-8)
        stored = [(_sql(p), m) for p, m in pairs]
        ids.update(self._select_in("SELECT path, id FROM images WHERE path IN ({marks})", [p for p, _ in stored]))
        marks = ", ".join("?" * (1 + len(_METADATA_COLUMNS)))
        self._db.executemany(
            f"INSERT OR REPLACE INTO image_metadata (id, {', '.join(_METADATA_COLUMNS)}) VALUES ({marks})",
            [(ids[p], *(getattr(m, c) for c in _METADATA_COLUMNS)) for p, m in stored if p in ids],
        )

    def set_metadata(self, records: Iterable[tuple[int, ImageMetadata]]) -> None:
        """Store (or replace) the metadata of images already indexed, by id."""
        marks = ", ".join("?" * (1 + len(_METADATA_COLUMNS)))
        self._db.executemany(
            f"INSERT OR REPLACE INTO image_metadata (id, {', '.join(_METADATA_COLUMNS)}) VALUES ({marks})",
            [(int(i), *(getattr(m, c) for c in _METADATA_COLUMNS)) for i, m in records],
        )

    def ids_without_metadata(self) -> set[int]:
        """Images with no metadata row: indexed before metadata was read (schema 1), or by an older cbir."""
        if self.schema_version < 2:
            return {row[0] for row in self._db.execute("SELECT id FROM images")}
        return {row[0] for row in self._db.execute("SELECT id FROM images WHERE id NOT IN (SELECT id FROM image_metadata)")}

    def metadata(self, ids: Sequence[int], gps: bool = False) -> dict[int, ImageMetadata]:
        """``{id: metadata}`` for those of ``ids`` that have some; GPS only when asked for (``gps``)."""
        columns = _METADATA_COLUMNS if gps else _METADATA_COLUMNS[:-2]
        found: dict[int, ImageMetadata] = {}
        if self.schema_version < 2:
            return found
        query = f"SELECT id, {', '.join(columns)} FROM image_metadata WHERE id IN ({{marks}})"
        for image_id, *values in self._select_in(query, _sqlite_ids(ids)):
            found[image_id] = ImageMetadata(**dict(zip(columns, values)))
        return found

    def metadata_counts(self) -> dict[str, int]:
        """How many indexed images have metadata, an EXIF date, a camera, a location."""
        if self.schema_version < 2:
            return {"with_metadata": 0, "dated_by_exif": 0, "with_camera": 0, "with_location": 0}
        row = self._db.execute(
            "SELECT COUNT(*), COUNT(NULLIF(m.taken_from = 'exif', 0)), COUNT(COALESCE(m.camera_make, m.camera_model)), "
            "COUNT(m.gps_lat) FROM image_metadata m JOIN images i ON i.id = m.id"
        ).fetchone()
        return {"with_metadata": row[0], "dated_by_exif": row[1], "with_camera": row[2], "with_location": row[3]}

    def _ids_of_files(self, paths: Sequence[str]) -> list[int]:
        """Ids of the entries of these files: a photo's row, every frame of a video."""
        ids = [r[0] for r in self._select_in("SELECT id FROM images WHERE path IN ({marks})", [_sql(p) for p in paths])]
        if self.schema_version >= 4:
            for path in filter(is_video_path, paths):
                ids.extend(r[0] for r in self._db.execute("SELECT id FROM images WHERE path >= ? AND path < ?", _frames_range(path)))
        return ids

    def _remove_path(self, path: str) -> None:
        self.remove_ids(self._ids_of_files([path]))

    def remove_ids(self, ids: Iterable[int]) -> int:
        """Delete images by id, remembering the ids for the next FAISS sync; returns how many."""
        rows = [(int(i),) for i in ids]
        before = self._db.total_changes
        self._db.executemany("DELETE FROM images WHERE id = ?", rows)
        removed = self._db.total_changes - before
        self._db.executemany("DELETE FROM image_metadata WHERE id = ?", rows)
        self._db.executemany("DELETE FROM local_features WHERE id = ?", rows)
        self._db.executemany("INSERT OR IGNORE INTO pending_removals (id) VALUES (?)", rows)
        return removed

    def update_stat(self, path: str, size: int, mtime_ns: int) -> None:
        """Record a new size/mtime for a file whose content hash did not change (every frame of a video)."""
        self._db.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime_ns, _sql(path)))
        if self.schema_version >= 4 and is_video_path(path):
            self._db.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE path >= ? AND path < ?", (size, mtime_ns, *_frames_range(path)))

    def set_labels(self, labels: dict[str, str]) -> None:
        """``{file: label}``; a video's label goes to each of its frames."""
        self._db.executemany("UPDATE images SET label = ? WHERE path = ?", [(_sql(v), _sql(k)) for k, v in labels.items()])
        videos = [(_sql(v), *_frames_range(k)) for k, v in labels.items() if is_video_path(k)]
        if videos and self.schema_version >= 4:
            self._db.executemany("UPDATE images SET label = ? WHERE path >= ? AND path < ?", videos)

    def images_under(self, root: str) -> dict[str, ImageRow]:
        """Rows whose path is ``root`` or lies below it, by their stored path (:attr:`ImageRow.key`)."""
        return {row.key: row for row in self._select_images(*_prefix_clause(root))}

    def image_rows(self, ids: Sequence[int] | None = None) -> list[ImageRow]:
        """Rows for ``ids`` in that order (missing ids are left out), or all rows by id."""
        if ids is None:
            return list(self._select_images("", ()))
        found: dict[int, ImageRow] = {}
        id_list = _sqlite_ids(ids)
        for start in range(0, len(id_list), _CHUNK):
            chunk = id_list[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._select_images(f"WHERE id IN ({marks})", chunk):
                found[row.id] = row
        return [found[i] for i in id_list if i in found]

    def _select_in(self, sql: str, values: Sequence) -> Iterator[tuple]:
        """Rows of ``sql`` (one ``IN ({marks})``) over ``values``, in chunks of parameters SQLite accepts."""
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            yield from self._db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)

    def _select_images(self, where: str, args: Sequence, order: str = "id") -> Iterator[ImageRow]:
        frame_time = "frame_time" if self.schema_version >= 4 else "NULL"
        query = f"SELECT id, path, size, mtime_ns, sha256, label, {frame_time} FROM images {where} ORDER BY {order}"
        for image_id, path, size, mtime_ns, sha256, label, time_s in self._db.execute(query, tuple(args)):
            path = _text(path)
            if time_s is not None:
                path = path[: path.rindex(_FRAME_MARK)]
            yield ImageRow(image_id, path, size, mtime_ns, sha256, _text(label), time_s)

    def ids_matching(self, image_filter: ImageFilter) -> np.ndarray:
        """Ids (ascending) of the images ``image_filter`` lets through."""
        where, args = image_filter.where(metadata=self.schema_version >= 2)
        rows = self._db.execute(f"SELECT id FROM images WHERE {where} ORDER BY id", args).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def image_page(self, image_filter: "ImageFilter", offset: int, limit: int) -> tuple[int, list[ImageRow]]:
        """How many images ``image_filter`` lets through, and ``limit`` of their rows from ``offset`` on, by path.

        By path: a folder's images stay together, page after page.
        """
        where, args = image_filter.where(metadata=self.schema_version >= 2)
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM images WHERE {where}", args).fetchone()
        rows = self._select_images(f"WHERE {where}", (*args, int(limit), int(offset)), order="path, id LIMIT ? OFFSET ?")
        return total, list(rows)

    def label_counts(self) -> dict[str, int]:
        """``{label: images}`` of every label, by label (images without one are not counted)."""
        rows = self._db.execute("SELECT label, COUNT(*) FROM images WHERE label IS NOT NULL GROUP BY label ORDER BY label")
        return {_text(label): count for label, count in rows}

    def camera_counts(self) -> dict[tuple[str | None, str | None], int]:
        """``{(make, model): images}`` of every camera, most images first."""
        if self.schema_version < 2:
            return {}
        rows = self._db.execute(
            "SELECT m.camera_make, m.camera_model, COUNT(*) FROM image_metadata m JOIN images i ON i.id = m.id "
            "WHERE m.camera_make IS NOT NULL OR m.camera_model IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
        )
        return {(make, model): count for make, model, count in rows}

    def taken_span(self) -> tuple[str | None, str | None]:
        """The first and last date an image was taken (or, without one, its file modified), as date filters see them."""
        row = self._db.execute(f"SELECT MIN(d), MAX(d) FROM (SELECT {_TAKEN_SQL if self.schema_version >= 2 else _MTIME_SQL} AS d FROM images)").fetchone()
        return row[0], row[1]

    def image_folders(self) -> list[str]:
        """The distinct folders that directly hold an indexed image (each with its trailing separator)."""
        # rtrim by every character but the separator: the path up to its last separator.
        query = "SELECT DISTINCT rtrim(path, replace(path, ?, '')) FROM images"
        if self.schema_version < 4:
            return [row[0] for row in self._db.execute(query, (os.sep,))]
        photos = [row[0] for row in self._db.execute(query + " WHERE frame_time IS NULL", (os.sep,))]
        # A frame's path ends VIDEO/@TIME: the first rtrim leaves VIDEO/, the folder is the video's.
        videos = {os.path.dirname(_text(row[0]).rstrip(os.sep)) + os.sep for row in self._db.execute(query + " WHERE frame_time IS NOT NULL", (os.sep,))}
        return list(dict.fromkeys([*photos, *sorted(videos)]))

    def video_counts(self) -> tuple[int, int]:
        """``(videos, their frames)`` in the catalogue."""
        if self.schema_version < 4:
            return 0, 0
        # A frame's path less its trailing digits, '.' and '@' is VIDEO/: one per video.
        query = "SELECT COUNT(DISTINCT rtrim(path, '0123456789.@')), COUNT(*) FROM images WHERE frame_time IS NOT NULL"
        videos, frames = self._db.execute(query).fetchone()
        return videos, frames

    def content_hashes(self) -> Iterator[tuple[int, str]]:
        """``(id, sha256)`` of every image."""
        yield from self._db.execute("SELECT id, sha256 FROM images")

    def row_for_path(self, path: str) -> ImageRow | None:
        """The row stored under ``path`` (a photo's path, or a frame's :func:`frame_key`)."""
        rows = list(self._select_images("WHERE path = ?", (_sql(path),)))
        return rows[0] if rows else None

    def iter_vectors(self, dim: int, batch_size: int | None = None, min_id: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` blocks in id order, for ids greater than ``min_id``.

        Blocks hold about 4 MB of vectors by default: building a FAISS index
        then needs little more memory than the index itself.
        """
        if batch_size is None:
            batch_size = max(256, (4 << 20) // (4 * max(1, dim)))
        cursor = self._db.execute("SELECT id, vector FROM images WHERE id > ? ORDER BY id", (min_id,))
        while True:
            rows = cursor.fetchmany(batch_size)
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(r[1] for r in rows)
            if len(blob) != len(rows) * dim * 4:
                raise IndexCorruptError(f"catalogue {self.path} holds vectors of the wrong size")
            yield ids, np.frombuffer(blob, dtype=np.float32).reshape(len(rows), dim)

    def vectors_for_ids(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Vectors of ``ids`` in that order (an id may repeat); every id must exist."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        unique, positions = np.unique(wanted, return_inverse=True)
        found = np.empty((len(unique), dim), dtype=np.float32)
        filled = np.zeros(len(unique), dtype=bool)
        row_of = {int(i): n for n, i in enumerate(unique)}
        for image_id, blob in self._select_in("SELECT id, vector FROM images WHERE id IN ({marks})", list(row_of)):
            found[row_of[image_id]] = np.frombuffer(blob, dtype=np.float32)
            filled[row_of[image_id]] = True
        if not filled.all():
            raise KeyError(f"no image with id {int(unique[~filled][0])}")
        if len(unique) == len(wanted) and np.array_equal(unique, wanted):
            return found  # sorted, no repeats (a training sample): no second copy (1 GB at 10M x 256-d)
        return found[positions]

    def vectors_by_id(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids found, their vectors)`` for ``ids``; ids no longer in the catalogue are left out."""
        found, blobs = [], []
        for image_id, blob in self._select_in("SELECT id, vector FROM images WHERE id IN ({marks})", [int(i) for i in ids]):
            found.append(image_id)
            blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(found), dim)
        return np.array(found, dtype=np.int64), vectors

    def max_id(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM images").fetchone()[0]

    def count_ids_up_to(self, max_id: int) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images WHERE id <= ?", (max_id,)).fetchone()[0]

    # -- local features ----------------------------------------------------
    def local_features(self, ids: Sequence[int]) -> dict[int, bytes]:
        """``{id: packed local features}`` of those ``ids`` that have them."""
        found: dict[int, bytes] = {}
        if self.schema_version < 3:
            return found
        found.update(self._select_in("SELECT id, data FROM local_features WHERE id IN ({marks})", _sqlite_ids(ids)))
        return found

    def set_local_features(self, records: Iterable[tuple[int, bytes]]) -> None:
        """Store packed local features of images already indexed (their vectors untouched)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO local_features (id, data) SELECT id, ? FROM images WHERE id = ?",
            [(data, int(image_id)) for image_id, data in records],
        )

    def ids_with_local_features(self) -> set[int]:
        return {row[0] for row in self._db.execute("SELECT id FROM local_features")} if self.schema_version >= 3 else set()

    def local_features_stats(self) -> tuple[int, int]:
        """``(images with local features, their total bytes)``."""
        if self.schema_version < 3:
            return 0, 0
        query = "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM local_features"
        count, total = self._db.execute(query).fetchone()
        return count, total

    def clear_local_features(self) -> None:
        self._db.execute("DELETE FROM local_features")

    # -- pending removals --------------------------------------------------
    def pending_removals(self) -> np.ndarray:
        rows = self._db.execute("SELECT id FROM pending_removals ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def clear_pending_removals(self, up_to_id: int) -> None:
        self._db.execute("DELETE FROM pending_removals WHERE id <= ?", (up_to_id,))

    # -- skipped files -----------------------------------------------------
    def set_skipped(self, path: str, size: int, mtime_ns: int, reason: str) -> None:
        self._remove_path(path)
        self._db.execute(
            "INSERT OR REPLACE INTO skipped (path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
            (_sql(path), size, mtime_ns, _sql(reason)),
        )

    def skipped_under(self, root: str) -> dict[str, tuple[int, int, str]]:
        """``{path: (size, mtime_ns, reason)}`` for skipped files at or below ``root``."""
        where, args = _prefix_clause(root)
        rows = self._db.execute(f"SELECT path, size, mtime_ns, reason FROM skipped {where}", args)
        return {_text(path): (size, mtime_ns, _text(reason)) for path, size, mtime_ns, reason in rows}

    def remove_skipped(self, paths: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM skipped WHERE path = ?", [(_sql(p),) for p in paths])

    def skipped(self, limit: int | None = None) -> list[tuple[str, str]]:
        """``(path, reason)`` of skipped files, sorted by path."""
        query = "SELECT path, reason FROM skipped ORDER BY path"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [(_text(path), _text(reason)) for path, reason in self._db.execute(query)]


def _sql(value: str | None) -> str | bytes | None:
    """A name as stored: ``TEXT`` if it is valid UTF-8, else a ``BLOB`` of its bytes (see the module docstring)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


def _text(value: str | bytes | None) -> str | None:
    """A stored name back as ``str`` (surrogate escapes for bytes that are not UTF-8)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _prefix_clause(root: str) -> tuple[str, tuple]:
    # A range on the path keeps the UNIQUE index usable and needs no LIKE escaping.
    # Names below a UTF-8 folder may be BLOBs (not UTF-8 themselves), and
    # SQLite orders TEXT before BLOB: one range of each.
    root = root.rstrip("/\\") or root
    raw = root.encode("utf-8", "surrogateescape")
    text = root if _sql(root) is root else None
    if text is None:  # no TEXT name lies under a folder whose own name is not UTF-8
        return "WHERE path = ? OR (path >= ? AND path < ?)", (raw, raw + b"/", raw + b"0")
    return (
        "WHERE path = ? OR (path >= ? AND path < ?) OR (path >= ? AND path < ?)",
        (text, text + "/", text + "0", raw + b"/", raw + b"0"),
    )


class _Transaction:
    """``BEGIN`` ... ``COMMIT``, or ``ROLLBACK`` on an error; a full disk becomes :class:`~cbir.errors.DiskFullError`."""

    def __init__(self, db: sqlite3.Connection, begin: str, join: bool = False, where: str = "the catalogue"):
        self._db = db
        self._begin = begin
        self._join = join
        self._joined = False
        self._where = where

    def __enter__(self) -> None:
        self._joined = self._join and self._db.in_transaction
        if not self._joined:
            self._db.execute(self._begin)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._joined:
            return False
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return False
            except sqlite3.OperationalError as failed:
                exc = failed
        # SQLite may have rolled back already (a full disk can do that): only roll back what is open.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error) and is_disk_full(exc):
            raise disk_full_error(self._where) from None
        if exc_type is None:
            raise exc
        return False
