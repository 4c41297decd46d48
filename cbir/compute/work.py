"""The per-file work every backend runs: read, hash, decode, prepare (and embed), and the types it hands back.

One file never raises: :func:`load_file` says why it could not be read, so a broken file is
skipped and recorded instead of aborting a run.
"""

from __future__ import annotations

import logging
import os
from stat import S_ISREG
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from cbir.cpus import usable_cores
from cbir.errors import CbirError, ImageError, UsageError
from cbir.images.decode import decode_file
from cbir.images.video import FrameSampling, is_video_path, sample_frames
from cbir.fileio import file_sha256, sha256_bytes

logger = logging.getLogger(__name__)


@dataclass
class LoadedFile:
    """One file as the indexer sees it: identity on disk, and image or the reason it has none."""

    path: Path
    size: int
    mtime_ns: int
    sha256: str
    image: np.ndarray | None = None
    error: str | None = None
    #: True when the content hash matched ``known_sha256``: the file was not decoded.
    unchanged: bool = False
    #: True when ``reusable(sha256)`` said the index already holds this content: not decoded.
    reusable: bool = False
    # What the photo says about itself (cbir.images.metadata.PhotoInfo), read from the same bytes;
    # flat scalars so that every backend's codec carries them ("" / 0: not known).
    width: int = 0
    height: int = 0
    taken: str = ""
    camera_make: str = ""
    camera_model: str = ""
    #: "latitude,longitude" in decimal degrees (text: Ray's columns turn None into "", and NaN != NaN).
    gps: str = ""
    #: For a RAW file: "preview" or "demosaiced" (cbir.images.raw.SOURCES).
    decoded_from: str = ""
    #: Packed local features (:mod:`cbir.features.local`) where the run computes them, else ``None``.
    local_features: bytes | None = None
    #: A video's frame: its time in seconds (-1: the file is a photo, or a video not decoded).
    frame_time: float = -1.0
    #: True on every frame of a video but its last: a batch is never cut inside a video, so
    #: its frames are committed (and replace the video's old ones) in one transaction.
    more_frames: bool = False

    def fields(self) -> tuple:
        """The file's fields but its path and image, in :data:`CODEC_FIELDS` order: the one
        codec that worker processes and Ray actors send back (a new field needs no other edit)."""
        return tuple(getattr(self, name) for name in CODEC_FIELDS)

    @classmethod
    def from_fields(cls, path: Path, values: Sequence, image: np.ndarray | None = None) -> "LoadedFile":
        """The inverse of :meth:`fields`. The writer calls it once per file: no per-field work."""
        loaded = cls.__new__(cls)
        loaded.__dict__.update(zip(CODEC_FIELDS, values))
        loaded.path, loaded.image = path, image
        return loaded


#: :class:`LoadedFile`'s fields as :meth:`LoadedFile.fields` sends them.
CODEC_FIELDS = tuple(f.name for f in dataclasses.fields(LoadedFile) if f.name not in ("path", "image"))


class Batch(NamedTuple):
    """What one committed batch holds: files embedded, their vectors (in that order), files not embedded."""

    embedded: list[LoadedFile]
    vectors: np.ndarray
    not_embedded: list[LoadedFile]


#: Files larger than this are not read (``$CBIR_MAX_FILE_MB`` changes it): a 3 GB file named
#: ``.jpg`` would otherwise be read whole into memory, in each worker at once, before any
#: decoder can refuse it. The largest camera JPEGs and PNG panoramas are far below it.
DEFAULT_MAX_FILE_MB = 256
ENV_MAX_FILE_MB = "CBIR_MAX_FILE_MB"


def max_file_bytes() -> int:
    """The cap on the size of an image file read: ``$CBIR_MAX_FILE_MB`` megabytes, else :data:`DEFAULT_MAX_FILE_MB`."""
    value = os.environ.get(ENV_MAX_FILE_MB, "")
    try:
        megabytes = float(value) if value.strip() else DEFAULT_MAX_FILE_MB
    except ValueError:
        raise UsageError(f"${ENV_MAX_FILE_MB} must be a number of megabytes, got {value!r}") from None
    if not megabytes > 0:
        raise UsageError(f"${ENV_MAX_FILE_MB} must be more than 0, got {value!r}")
    return int(megabytes * 2**20)


def _too_large(size: int, limit: int) -> str:
    return f"too large ({size / 2**20:,.0f} MB, limit {limit / 2**20:,.0f} MB; ${ENV_MAX_FILE_MB} raises it)"


def load_file(
    path: Path,
    min_side: int | None = None,
    known_sha256: str | None = None,
    reusable: Callable[[str], bool] | None = None,
    max_bytes: int | None = None,
    local: Callable[[np.ndarray], bytes] | None = None,
) -> LoadedFile:
    """Read ``path`` once: stat, content hash and the decoded image.

    If the content hash equals ``known_sha256`` the file is not decoded and
    ``unchanged`` is set: a touched but identical file costs a read, not a
    decode. Likewise when ``reusable(hash)`` is true (``reusable`` is set):
    the caller has a vector for this content already. Never raises for a
    bad file: ``error`` holds a short reason instead (unreadable, permission denied, empty, truncated, not an image,
    too large). ``max_bytes`` (default :func:`max_file_bytes`): a larger file is not read at all.
    ``local`` (a :class:`cbir.features.local.LocalExtractor`): the file's local features too, from its
    own decode at the size they need (the extractor's image, and so its vector, is the same either way).
    """
    limit = max_file_bytes() if max_bytes is None else max_bytes
    try:
        # Non-blocking open: a FIFO or device named like an image must not hang the run.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            stat = os.fstat(f.fileno())
            if not S_ISREG(stat.st_mode):
                return LoadedFile(path, stat.st_size, stat.st_mtime_ns, "", error="not a regular file")
            if stat.st_size > limit:
                return LoadedFile(path, stat.st_size, stat.st_mtime_ns, "", error=_too_large(stat.st_size, limit))
            data = f.read(limit + 1)  # a file that grew since the stat is still cut off at the cap
            if len(data) > limit:
                return LoadedFile(path, stat.st_size, stat.st_mtime_ns, "", error=_too_large(len(data), limit))
    except OSError as exc:
        try:
            stat = os.stat(path)
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime_ns = -1, -1
        return LoadedFile(path, size, mtime_ns, "", error=(exc.strerror or str(exc)).lower())
    loaded = LoadedFile(path, stat.st_size, stat.st_mtime_ns, sha256_bytes(data))
    if known_sha256 is not None and loaded.sha256 == known_sha256:
        loaded.unchanged = True
        return loaded
    if reusable is not None and reusable(loaded.sha256):
        loaded.reusable = True
        return loaded
    try:
        photo = decode_file(data, path.suffix, min_side)
    except ImageError as exc:
        loaded.error = str(exc)
        return loaded
    loaded.image, info = photo.image, photo.info
    loaded.width, loaded.height, loaded.taken = info.width, info.height, info.taken
    loaded.camera_make, loaded.camera_model, loaded.decoded_from = info.make, info.model, photo.source
    if info.gps_lat is not None and info.gps_lon is not None:
        loaded.gps = f"{info.gps_lat:.7f},{info.gps_lon:.7f}"
    if local is not None:
        reduced = (loaded.image.shape[1], loaded.image.shape[0]) != (info.width, info.height)
        loaded.local_features = _local_features(local, data, path.suffix, loaded.image, reduced)
    return loaded


def _local_features(local, data: bytes, suffix: str, image: np.ndarray, reduced: bool) -> bytes | None:
    """Local features of a decoded file: decoded again where the extractor's reduced decode is too small for them."""
    import cv2

    try:
        if reduced and min(image.shape[:2]) < local.decode_min_side:
            image = decode_file(data, suffix, local.decode_min_side).image
        return local(image)
    except (ImageError, cv2.error):
        return None  # an image the detector cannot use: indexed all the same, never verified


#: Below this many files, starting worker processes costs more than they save.
MIN_FILES_FOR_PROCESSES = 256


class WorkerError(CbirError):
    """A worker process died (killed, out of memory) before returning its files."""


def check_workers(workers: int | None) -> int:
    """``workers`` checked (a positive integer), or the usable core count for ``None``."""
    if workers is None:
        return usable_cores()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


@dataclass(frozen=True)
class EmbedderRef:
    """How a worker process or a Ray actor builds its own copy of an index's embedder.

    The embedder's config, the folder of its saved state (which holds the
    converted network: workers run the runtime engine, never TensorFlow) and
    the engine threads each copy may use (the cores shared out).
    """

    config: dict[str, Any]
    state_dir: str
    threads: int

    @classmethod
    def for_embedder(cls, embedder, state_dir: Path, copies: int, cores: int | None = None) -> "EmbedderRef":
        """A reference for ``copies`` engines sharing ``cores`` (default: this machine's usable cores)."""
        threads = max(1, (cores if cores is not None else usable_cores()) // max(1, copies))
        return cls(embedder.get_config(), str(state_dir), threads)

    def build(self):
        """The embedder, state loaded, its engine limited to :attr:`threads` (the one place workers build it)."""
        from cbir.features import runtimes
        from cbir.features.pipeline import Embedder

        runtimes.limit_threads(self.threads)  # the copies share the cores: no oversubscribed engines
        return Embedder.from_config(self.config).load_state(Path(self.state_dir))


@dataclass(frozen=True)
class PrepareSpec:
    """How to load one file, in a form a worker process can rebuild: decode size and extractor config.

    ``extractor`` is an extractor config (``{"name", "params"}``); ``None``
    returns the decoded image itself. With ``embedder`` (where workers embed
    too, :meth:`for_embedder`) the items handed back are vectors.
    """

    min_side: int | None
    extractor: dict[str, Any] | None = None
    embedder: EmbedderRef | None = None
    #: A :class:`cbir.features.local.LocalFeatureConfig` as a dict: each decoded image's local features too.
    local: dict[str, Any] | None = None
    #: ``False``: hand back no item at all (local features only), not the decoded image.
    images: bool = True
    #: A :class:`cbir.images.video.FrameSampling` as a dict: which frames of a video are entries (``None``: the defaults).
    video: dict[str, Any] | None = None

    @classmethod
    def for_extractor(cls, extractor) -> "PrepareSpec":
        return cls(extractor.decode_min_side, extractor.get_config())

    @classmethod
    def for_embedder(cls, embedder, ref: EmbedderRef) -> "PrepareSpec":
        """Workers prepare and embed, each with its own engine on a share of the cores."""
        return cls(embedder.decode_min_side, embedder.extractor.get_config(), ref)

    def build_embedder(self):
        """The embedder a worker runs, built from the saved state; ``None`` where workers only prepare."""
        return self.embedder.build() if self.embedder is not None else None

    def build_video(self) -> FrameSampling:
        return FrameSampling.from_dict(self.video)

    def build_local(self) -> Callable[[np.ndarray], bytes] | None:
        """``image -> packed local features``, or ``None`` where the spec asks for none."""
        if self.local is None:
            return None
        from cbir.features.local import LocalFeatureConfig

        return LocalFeatureConfig.from_dict(self.local).extractor()

    def build(self) -> Callable[[np.ndarray], Any] | None:
        if not self.images:
            return no_item
        if self.extractor is None:
            return None
        from cbir.features.base import extractor_class

        # Only ``prepare`` runs here: no parameter checks, no model, no TensorFlow.
        return extractor_class(self.extractor["name"])(**self.extractor.get("params", {})).prepare


class KnownContent:
    """Content hashes already in an index, by 64-bit prefix: a file with one need not be decoded.

    Compact (8 bytes per image, plus 8 for its id where the caller needs it)
    so that worker processes can hold it; a prefix match is confirmed
    against the full hash in the catalogue.
    """

    def __init__(self, prefixes: np.ndarray, ids: np.ndarray | None = None):
        self.prefixes = prefixes
        self.ids = ids

    @classmethod
    def from_hashes(cls, pairs: Iterable[tuple[int, str]]) -> "KnownContent":
        """From ``(id, sha256)`` pairs, e.g. :meth:`cbir.store.catalogue.Catalogue.content_hashes`."""
        ids, prefixes = [], []
        for image_id, sha256 in pairs:
            if sha256:
                ids.append(image_id)
                prefixes.append(_prefix(sha256))
        prefixes_array = np.array(prefixes, dtype=np.uint64)
        order = np.argsort(prefixes_array, kind="stable")
        return cls(prefixes_array[order], np.array(ids, dtype=np.int64)[order])

    def for_workers(self) -> "KnownContent":
        """The prefixes only: what a worker needs to decide not to decode."""
        return KnownContent(self.prefixes)

    def __len__(self) -> int:
        return len(self.prefixes)

    def __contains__(self, sha256: str) -> bool:
        return len(self.candidate_positions(sha256)) > 0

    def candidate_positions(self, sha256: str) -> range:
        if not len(self.prefixes) or not sha256:
            return range(0)
        key = np.uint64(_prefix(sha256))
        return range(int(np.searchsorted(self.prefixes, key)), int(np.searchsorted(self.prefixes, key, side="right")))

    def candidate_ids(self, sha256: str) -> list[int]:
        """Ids of indexed images whose hash starts like ``sha256`` (confirm with the full hash)."""
        if self.ids is None:
            raise RuntimeError("this KnownContent was made for workers and has no ids")
        return [int(self.ids[i]) for i in self.candidate_positions(sha256)]


def _prefix(sha256: str) -> int:
    return int(sha256[:16], 16)


def no_item(image: np.ndarray) -> bool:
    """The item of a file loaded for its local features only: a flag, not a copy of the image."""
    return True


def load_and_embed(
    paths: Sequence[Path],
    known_sha256s: Sequence[str | None],
    min_side: int | None,
    prepare: Callable[[np.ndarray], Any] | None,
    embed: Callable[[Sequence[Any]], np.ndarray] | None,
    known: KnownContent | None,
    local: Callable[[np.ndarray], bytes] | None = None,
    video: FrameSampling | None = None,
) -> list[tuple[LoadedFile, Any]]:
    """:func:`load_entries` for each file, then ``embed`` (if given) on the prepared items at once: their vectors."""
    loaded = [pair for path, sha in zip(paths, known_sha256s) for pair in load_entries(path, min_side, prepare, sha, known, local, video)]
    found = [i for i, (_, item) in enumerate(loaded) if item is not None]
    if embed is not None and found:
        vectors = embed([loaded[i][1] for i in found])
        for i, vector in zip(found, vectors):
            loaded[i] = (loaded[i][0], vector)
    return loaded


def load_entries(
    path: Path,
    min_side: int | None,
    prepare: Callable[[np.ndarray], Any] | None,
    known_sha256: str | None,
    known: KnownContent | None,
    local: Callable[[np.ndarray], bytes] | None = None,
    video: FrameSampling | None = None,
) -> list[tuple[LoadedFile, Any]]:
    """The catalogue entries of one file: a photo's one, or a video's frames (:func:`load_video`)."""
    if is_video_path(path):
        return load_video(path, min_side, prepare, known_sha256, known, local, video or FrameSampling())
    return [load_one(path, min_side, prepare, known_sha256, known, local)]


def load_video(
    path: Path,
    min_side: int | None,
    prepare: Callable[[np.ndarray], Any] | None,
    known_sha256: str | None,
    known: KnownContent | None,
    local: Callable[[np.ndarray], bytes] | None,
    sampling: FrameSampling,
) -> list[tuple[LoadedFile, Any]]:
    """A video's chosen frames, each prepared as soon as it is decoded (one decoded frame in memory at a time).

    The content hash is streamed (a video is not read into memory, nor held to
    the photo size cap); an unchanged or reusable video is not decoded, as a
    photo is not. A video with no decodable frame is one entry with ``error``.
    """
    try:
        stat = os.stat(path)
        if not S_ISREG(stat.st_mode):
            return [(LoadedFile(path, stat.st_size, stat.st_mtime_ns, "", error="not a regular file"), None)]
        sha256 = file_sha256(path)
    except OSError as exc:
        return [(LoadedFile(path, -1, -1, "", error=(exc.strerror or str(exc)).lower()), None)]
    base = LoadedFile(path, stat.st_size, stat.st_mtime_ns, sha256)
    if known_sha256 is not None and sha256 == known_sha256:
        base.unchanged = True
        return [(base, None)]
    if known is not None and sha256 in known:
        base.reusable = True
        return [(base, None)]
    entries: list[tuple[LoadedFile, Any]] = []
    try:
        for frame in sample_frames(path, sampling, min_side):
            entry = dataclasses.replace(base, frame_time=frame.time, more_frames=True)
            entry.height, entry.width = frame.image.shape[:2]
            if local is not None:
                entry.local_features = _local_features(local, b"", "", frame.image, False)
            item = _prepared(entry, frame.image, prepare)
            if item is not None:
                entries.append((entry, item))
    except ImageError as exc:
        if not entries:
            base.error = str(exc)
            return [(base, None)]
    if not entries:
        base.error = "no frame of the video could be processed"
        return [(base, None)]
    entries[-1][0].more_frames = False
    return entries


def load_one(
    path: Path,
    min_side: int | None,
    prepare: Callable[[np.ndarray], Any] | None,
    known_sha256: str | None,
    known: KnownContent | None,
    local: Callable[[np.ndarray], bytes] | None = None,
) -> tuple[LoadedFile, Any]:
    """One file read, decoded and prepared; ``local`` (if given) computes its local features from the same pixels."""
    loaded = load_file(path, min_side, known_sha256, reusable=known.__contains__ if known else None, local=local)
    if loaded.image is None:
        return loaded, None
    image, loaded.image = loaded.image, None
    return loaded, _prepared(loaded, image, prepare)


def _prepared(loaded: LoadedFile, image: np.ndarray, prepare: Callable[[np.ndarray], Any] | None) -> Any:
    """``prepare(image)`` (the image itself without ``prepare``), or ``None`` with ``loaded.error`` set."""
    if prepare is None:
        loaded.image = image
        return image
    try:
        return prepare(image)
    except ImageError as exc:  # an image this extractor cannot use is skipped like a broken file
        loaded.error = f"cannot process: {exc}"
    except Exception as exc:
        import cv2

        if not isinstance(exc, cv2.error):
            raise  # a bug, not a bad image: let it surface
        loaded.error = f"cannot process: {str(exc).strip().splitlines()[-1]}"
    return None
