"""Indexes kept open for a server: opened once, shared by every request, refreshed in place.

A :class:`LiveIndex` holds one :class:`~cbir.retrieval.search.Searcher`. A background
thread of the :class:`IndexPool` watches each index (SQLite's
``data_version``, the manifest's and catalogue's identity on disk) and, when
``cbir index`` or ``cbir remove`` has committed something, opens a fresh
``Searcher`` beside the old one, reusing the loaded model, and swaps it in.
Requests in flight finish on the old one, which is closed when the last of
them is done; nothing ever waits for a reload.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import cv2
import numpy as np

from cbir.store.catalogue import Catalogue
from cbir.errors import CbirError, ImageError, IndexNotFoundError
from cbir.images.decode import decode_image
from cbir.images.video import frame_at
from cbir.retrieval.search import Searcher
from cbir.server.batching import SearchBatcher
from cbir.store.directory import CATALOGUE_FILE, is_index, list_indexes
from cbir.store.manifest import MANIFEST_FILE
from cbir.store.locations import default_index_dir, index_path

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 256


class LiveIndex:
    """One index as the server sees it: the current ``Searcher`` and how to notice a newer state."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.name
        self._lock = threading.Lock()
        self.batcher = SearchBatcher()  # concurrent uploads are searched together
        self._searcher = Searcher.open(self.name, self.path.parent)
        try:
            _ = self._searcher.embedder  # load the model now, not in the first request
            self._users: dict[int, int] = {id(self._searcher): 0}
            self._retired: dict[int, Searcher] = {}
            self._watch: Catalogue | None = None
            self._identity = self._disk_identity()
            self._open_watch()
        except BaseException:
            self._searcher.close()
            raise

    # -- requests ----------------------------------------------------------
    @contextmanager
    def use(self) -> Iterator[Searcher]:
        """The current ``Searcher``, kept open until the ``with`` block ends.

        :class:`~cbir.errors.IndexNotFoundError` once the index is no longer
        served (deleted): a request then gets a 404, never a closed searcher.
        """
        with self._lock:
            searcher = self._searcher
            if searcher is None:
                raise IndexNotFoundError(f"index {self.name!r} is no longer served (it was deleted)")
            self._users[id(searcher)] = self._users.get(id(searcher), 0) + 1
        try:
            yield searcher
        finally:
            with self._lock:
                self._users[id(searcher)] -= 1
                self._close_if_unused(searcher)

    # -- refreshing --------------------------------------------------------
    def _disk_identity(self) -> tuple:
        def stat(name: str) -> tuple:
            try:
                st = os.stat(self.path / name)
            except OSError:
                return ()
            return (st.st_ino, st.st_size, st.st_mtime_ns)

        return stat(MANIFEST_FILE), stat(CATALOGUE_FILE)[:1]  # a catalogue's size and mtime change with every commit

    def _open_watch(self) -> None:
        # Its own connection: data_version counts commits made by *other* connections.
        if self._watch is not None:
            self._watch.close()
        self._watch = Catalogue(self.path / CATALOGUE_FILE, read_only=True, check_same_thread=False)
        self._version = self._watch.data_version()

    def changed(self) -> bool:
        """Whether the index on disk has committed something since the current ``Searcher`` was opened."""
        if self._watch is None:  # retired
            return False
        identity = self._disk_identity()
        if identity != self._identity:
            return True
        return self._watch.data_version() != self._version

    def refresh(self) -> bool:
        """Swap in a ``Searcher`` on the index's newest committed state, if it changed. Refresher thread only."""
        if not self.changed():
            return False
        identity = self._disk_identity()
        if identity[1] != self._identity[1]:
            self._open_watch()  # the catalogue file was replaced (index deleted and rebuilt)
        version = self._watch.data_version()
        fresh = self._searcher.reopened()
        with self._lock:
            old, self._searcher = self._searcher, fresh
            self._users[id(fresh)] = 0
            self._retired[id(old)] = old
            self._close_if_unused(old)
        self._identity, self._version = identity, version
        logger.info("index %r reloaded: %d images", self.name, fresh.size)
        return True

    def _close_if_unused(self, searcher: Searcher) -> None:
        key = id(searcher)
        if key in self._retired and self._users.get(key) == 0:
            del self._retired[key], self._users[key]
            searcher.close()

    def retire(self) -> None:
        """Stop serving: new requests get a 404; each ``Searcher`` closes when its last request is done.

        Closing releases its files (the catalogue, the memory-mapped DBA
        vectors), so a deleted index frees its disk while the server runs.
        """
        with self._lock:
            if self._searcher is not None:
                old, self._searcher = self._searcher, None
                self._retired[id(old)] = old
                self._close_if_unused(old)
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def close(self) -> None:
        """Close everything now (the server is stopping)."""
        with self._lock:
            for searcher in [self._searcher, *self._retired.values()]:
                if searcher is not None:
                    searcher.close()
            self._searcher = None
            self._retired.clear()
            if self._watch is not None:
                self._watch.close()
                self._watch = None


class IndexPool:
    """The indexes a server offers: every index in ``index_dir``, or only ``names``.

    Without ``names``, indexes created in ``index_dir`` while serving are
    added and deleted ones dropped at the next refresh; an ``index_dir`` with
    no index yet (or none at all) is served empty until one appears.
    :meth:`open` raises :class:`~cbir.errors.CbirError` if a named index
    cannot be opened.
    """

    def __init__(self, index_dir: str | os.PathLike | None = None, names: Sequence[str] | None = None, refresh_interval: float = 1.0):
        self.index_dir = Path(index_dir) if index_dir is not None else default_index_dir()
        self.names = list(names) if names else None
        self.refresh_interval = refresh_interval
        self._indexes: dict[str, LiveIndex] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_open = False

    def open(self) -> "IndexPool":
        if self.names is not None:
            for name in self.names:
                self._indexes[name] = LiveIndex(index_path(name, self.index_dir))
        else:
            self._scan()  # none yet is fine: the page says how to build one, the refresher picks it up
        self.is_open = True
        return self

    def start_refreshing(self) -> None:
        if self._thread is None and self.refresh_interval > 0:
            self._thread = threading.Thread(target=self._refresh_loop, name="cbir-index-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for live in self._indexes.values():
                live.close()
            self._indexes.clear()

    def get(self, name: str) -> LiveIndex:
        """The index called ``name``; the name is only looked up, never used as a path."""
        with self._lock:
            live = self._indexes.get(name)
        if live is None:
            raise IndexNotFoundError(f"no index named {name!r} is served here")
        return live

    def problems(self) -> list[str]:
        """Why indexes found in the folder are not served (one line each)."""
        with self._lock:
            return [f"{name}: {reason}" for name, reason in sorted(self._failed.items())]

    def names_served(self) -> list[str]:
        with self._lock:
            return sorted(self._indexes)

    def refresh(self) -> None:
        """Pick up new commits, new and deleted indexes (what the refresher thread runs)."""
        self._scan()
        with self._lock:
            indexes = list(self._indexes.values())
        for live in indexes:
            try:
                live.refresh()
            except (CbirError, OSError) as exc:  # a writer mid-way: keep serving the last good state
                if self._failed.get(live.name) != str(exc):  # say it once, not every second
                    logger.warning("index %r not reloaded, still serving its previous state: %s", live.name, exc)
                self._failed[live.name] = str(exc)
            else:
                self._failed.pop(live.name, None)

    def _scan(self) -> None:
        if self.names is None:
            present = {path.name: path for path in list_indexes(self.index_dir)}
        else:  # named indexes: dropped while deleted, served again once rebuilt
            present = {name: path for name in self.names if is_index(path := index_path(name, self.index_dir))}
        with self._lock:
            gone = [name for name in self._indexes if name not in present and not is_index(self.index_dir / name)]
            dropped = [self._indexes.pop(name) for name in gone]
        for live in dropped:
            live.retire()  # requests in flight finish on it first
            logger.info("index %r is no longer served: it was deleted", live.name)
        for name, path in present.items():
            if name in self._indexes:
                continue
            try:
                live = LiveIndex(path)
            except (CbirError, OSError) as exc:
                if self._failed.get(name) != str(exc):
                    logger.warning("index %r is not served: %s", name, exc)
                self._failed[name] = str(exc)
                continue
            self._failed.pop(name, None)
            with self._lock:
                self._indexes[name] = live

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except Exception:  # the loop must outlive any one bad moment
                logger.exception("refreshing indexes failed")


class ThumbnailCache:
    """Small JPEGs of indexed images, made on first request, kept in memory (the index folder stays read-only)."""

    def __init__(self, max_bytes: int = 64 * 2**20, side: int = THUMBNAIL_SIDE):
        self.max_bytes = max_bytes
        self.side = side
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, index_name: str, image_id: int, open_file: Callable[[], tuple[Any, BinaryIO]]) -> bytes:
        """The thumbnail of an image; ``open_file()`` gives ``(row, open file)`` when it must be made."""
        key = (index_name, image_id)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        row, file = open_file()
        with file:
            if getattr(row, "time", None) is not None:
                data = self._encode(_frame_of_open_file(file, row, self.side), row.path)
            else:
                try:
                    encoded = file.read()
                except OSError as exc:
                    raise ImageError(f"cannot read {row.path}: {exc.strerror or exc}") from None
                data = self._make(encoded, row.path)
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes and self._items:
                    _, dropped = self._items.popitem(last=False)
                    self._bytes -= len(dropped)
        return data

    def _make(self, encoded: bytes, path: str) -> bytes:
        return self._encode(decode_image(encoded, min_side=self.side), path)

    def _encode(self, rgb: np.ndarray, path: str) -> bytes:
        h, w = rgb.shape[:2]
        scale = self.side / max(h, w)
        if scale < 1:
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 82])
        if not ok:
            raise ImageError(f"cannot make a thumbnail of {path}")
        return jpeg.tobytes()


def _frame_of_open_file(file: BinaryIO, row, side: int) -> np.ndarray:
    """A video entry's frame, read from the file opened and checked (by its descriptor where the system
    names one, so the name is not looked up again), not the whole video read into memory."""
    own = f"/proc/self/fd/{file.fileno()}"
    return frame_at(own if os.path.exists(own) else row.path, row.time, min_side=side)
