"""Frames of video files: which suffixes are videos, which frames a video is indexed by, and one frame at a time.

A video is indexed by some of its frames, each a catalogue entry naming the
video and its time: one every ``interval`` seconds, and one at each scene
change (a frame whose colours differ from the last one looked at). Bounded
whatever the video: at most ``max_frames`` frames, spread over the whole
video (the interval grows with the duration), and one decoded frame in
memory at a time, each handed on as soon as it is chosen. Videos longer
than :data:`SEEK_ABOVE_S` are not decoded through: each chosen time is
sought (a 10-hour video costs ``max_frames`` seeks, not a million decodes),
and scene changes are looked for only in videos decoded through.

OpenCV's FFmpeg backend decodes (it is already a dependency; PyAV would add
a second copy of FFmpeg for the same frames). It is always named
(``cv2.CAP_FFMPEG``): OpenCV's image-sequence backend would otherwise read
a name holding ``%`` as a pattern.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Iterator, NamedTuple

import numpy as np

from cbir.errors import ImageError

#: Lower-case suffixes of video files (containers FFmpeg reads).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".3gp", ".mts", ".m2ts", ".ogv", ".flv"}
)

#: One frame every this many seconds by default (more apart in a video longer than ``interval x max_frames``).
DEFAULT_INTERVAL_S = 2.0
#: At most this many frames of one video by default.
DEFAULT_MAX_FRAMES = 100
#: Videos longer than this are sampled by seeking instead of decoding every frame.
SEEK_ABOVE_S = 600.0
#: Scene changes are looked for this many times a second (a small colour histogram of each look).
_LOOKS_PER_S = 2.0
#: A look whose histogram lies this far (Bhattacharyya distance) from the previous look's is a new scene.
SCENE_THRESHOLD = 0.3


#: ISO BMFF brands of still images (HEIF, AVIF, JPEG XL): an ``ftyp`` box with any other is a video.
_STILL_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis", b"jxl "})


def looks_like_video(data: bytes) -> bool:
    """Whether ``data`` starts like a video container (MP4/MOV, Matroska/WebM, AVI, MPEG, Ogg, FLV, ASF):
    for telling an upload that is not a still from one that is not readable at all."""
    head = bytes(data[:16])
    if head[4:8] == b"ftyp":
        return head[8:12] not in _STILL_BRANDS
    return head.startswith((b"\x1a\x45\xdf\xa3", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"OggS", b"FLV", b"\x30\x26\xb2\x75")) or (
        head[:4] == b"RIFF" and head[8:12] == b"AVI "
    )


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether the file name has a video suffix (any letter case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video are indexed: every ``interval`` seconds, scene changes, at most ``max_frames``."""

    interval: float = DEFAULT_INTERVAL_S
    max_frames: int = DEFAULT_MAX_FRAMES
    #: Also a frame at each scene change (videos decoded through, within the cap).
    scenes: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.interval, (int, float)) and math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"the frame interval must be a positive number of seconds, got {self.interval!r}")
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 1:
            raise ValueError(f"the frames per video must be a positive integer, got {self.max_frames!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "FrameSampling":
        return cls(**data) if data else cls()


class Frame(NamedTuple):
    """One chosen frame: its time in seconds and its pixels (RGB, uint8), reduced towards ``min_side``."""

    time: float
    image: np.ndarray


class VideoInfo(NamedTuple):
    width: int
    height: int
    fps: float
    #: Seconds, or ``None`` where the container does not say.
    duration: float | None


def open_video(path: str | os.PathLike):
    """An open ``cv2.VideoCapture`` and what it says of the video, or :class:`ImageError`."""
    import cv2

    capture = cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise ImageError("not a readable video")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = fps if math.isfinite(fps) and 0 < fps < 10_000 else 0.0
    duration = count / fps if fps > 0 and math.isfinite(count) and count > 0 else None
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return capture, VideoInfo(width, height, fps, duration)


def sample_frames(path: str | os.PathLike, sampling: FrameSampling = FrameSampling(), min_side: int | None = None) -> Iterator[Frame]:
    """The frames a video is indexed by, in time order, one decoded at a time (see the module docstring).

    Raises :class:`ImageError` where the file is not a video FFmpeg opens, or
    none of its frames decodes (a frame that fails later ends the video there).
    """
    capture, info = open_video(path)
    try:
        step = sampling.interval
        if info.duration is not None:
            step = max(step, info.duration / sampling.max_frames)
        if info.duration is not None and info.duration > SEEK_ABOVE_S:
            frames = _by_seeking(capture, info, step, sampling.max_frames, min_side)
        else:
            frames = _decoded_through(capture, info, step, sampling, min_side)
        produced = 0
        for frame in frames:
            produced += 1
            yield frame
        if not produced:
            raise ImageError("no decodable video frame")
    finally:
        capture.release()


def _decoded_through(capture, info: VideoInfo, step: float, sampling: FrameSampling, min_side: int | None) -> Iterator[Frame]:
    """Every frame decoded (``grab``), converted only where looked at: interval frames and scene changes."""
    import cv2

    # The interval frames come first in the budget, so scene changes never crowd out the end of a video.
    planned = math.ceil(info.duration / step) if info.duration is not None else sampling.max_frames
    scene_budget = max(0, sampling.max_frames - planned) if sampling.scenes else 0
    look_every = 1.0 / _LOOKS_PER_S
    next_interval, next_look, last_emitted = 0.0, 0.0, -math.inf
    previous_hist = None
    emitted = index = 0
    while emitted < sampling.max_frames and capture.grab():
        if scene_budget <= 0 and info.duration is not None and next_interval >= info.duration:
            break  # nothing left to choose: the rest of the video need not be decoded
        time_s = _frame_time(capture, index, info.fps)
        index += 1
        due = time_s >= next_interval - 1e-6
        look = scene_budget > 0 and time_s >= next_look - 1e-6
        if not (due or look):
            continue
        ok, bgr = capture.retrieve()
        if not ok or bgr is None:
            break
        scene = False
        if look:
            next_look = time_s + look_every
            hist = _look(bgr)
            scene = previous_hist is not None and cv2.compareHist(previous_hist, hist, cv2.HISTCMP_BHATTACHARYYA) > SCENE_THRESHOLD
            previous_hist = hist
        # A scene change close after the last frame is that frame's scene already.
        scene = scene and time_s - last_emitted >= min(step, 1.0) / 2
        if due or scene:
            if due:
                next_interval = time_s + step
            else:
                scene_budget -= 1
            last_emitted = time_s
            emitted += 1
            yield Frame(round(time_s, 3), _rgb(bgr, min_side))


def _by_seeking(capture, info: VideoInfo, step: float, max_frames: int, min_side: int | None) -> Iterator[Frame]:
    """A long video: each chosen time sought and one frame read there."""
    import cv2

    for n in range(max_frames):
        wanted = n * step
        if info.duration is not None and wanted >= info.duration:
            return
        capture.set(cv2.CAP_PROP_POS_MSEC, wanted * 1000.0)
        ok, bgr = capture.read()
        if not ok or bgr is None:
            return
        position = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # the frame read, as FFmpeg places it
        time_s = position if math.isfinite(position) and abs(position - wanted) < step else wanted
        yield Frame(round(time_s, 3), _rgb(bgr, min_side))


def _frame_time(capture, index: int, fps: float) -> float:
    """The time of the frame just grabbed: its timestamp, else its number over the frame rate."""
    import cv2

    position = capture.get(cv2.CAP_PROP_POS_MSEC)
    if math.isfinite(position) and position >= 0 and (position > 0 or index == 0):
        return position / 1000.0
    return index / fps if fps > 0 else float(index)


def _look(bgr: np.ndarray) -> np.ndarray:
    """A small hue-saturation histogram of a frame, for telling scenes apart."""
    import cv2

    small = cv2.resize(bgr, (64, 36), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, hist, 1.0, 0.0, cv2.NORM_L1)


def _rgb(bgr: np.ndarray, min_side: int | None) -> np.ndarray:
    """A frame in RGB, halved while its shorter side stays at least ``min_side`` (as JPEGs are decoded reduced)."""
    import cv2

    if min_side:
        factor = 1
        while min(bgr.shape[:2]) // (factor * 2) >= min_side and factor < 8:
            factor *= 2
        if factor > 1:
            bgr = cv2.resize(bgr, (bgr.shape[1] // factor, bgr.shape[0] // factor), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def frame_at(path: str | os.PathLike, time_s: float, min_side: int | None = None) -> np.ndarray:
    """The frame shown at ``time_s`` seconds (RGB): what a result, a thumbnail or a montage shows of a video."""
    import cv2

    capture, info = open_video(path)
    try:
        if time_s > 0:
            capture.set(cv2.CAP_PROP_POS_MSEC, float(time_s) * 1000.0)
        ok, bgr = capture.read()
        if not ok or bgr is None:
            raise ImageError(f"no decodable video frame at {format_time(time_s)}")
        return _rgb(bgr, min_side)
    finally:
        capture.release()


def format_time(seconds: float) -> str:
    """``83.4`` -> ``"01:23"``; an hour or more -> ``"1:02:03"``."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe_frame(path: str, time_s: float | None) -> str:
    """How a result names what it shows: ``clip.mp4 @ 01:23`` for a frame, the path itself for a photo."""
    return path if time_s is None else f"{path} @ {format_time(time_s)}"


def read_picture(path: str | os.PathLike, time_s: float | None = None, min_side: int | None = None) -> np.ndarray:
    """What an entry shows (RGB): a photo decoded, or a video's frame at ``time_s``; :class:`ImageError` otherwise."""
    if time_s is None:
        from cbir.images.decode import read_image

        return read_image(path, min_side=min_side)
    return frame_at(path, time_s, min_side)
