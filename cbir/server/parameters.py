"""What one request may ask of the server, and how its query parameters are read: the limits, the
refusal (:class:`ApiError`), ``k``/``offset``/``verify`` and flags, image ids, and their OpenAPI descriptions."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID = re.compile(r"[0-9]{1,18}")
_K = re.compile(r"[+-]?[0-9]{1,18}")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 20 * 2**20
    #: Below the indexing cap: an upload decodes in memory, several at once.
    max_pixels: int = 50_000_000
    #: Results in one answer (a search's ``k``, a listing's ``limit``); ``offset`` pages further.
    max_k: int = 1000
    #: How deep a search may page: ``offset + k`` at most this (a listing pages to its end).
    max_depth: int = 10_000
    default_k: int = 10
    #: Requests decoding and searching at once; default: three per usable core (at most 32).
    search_threads: int | None = None
    #: Seconds a request body may take to arrive, all of it (``None``: no limit): 408 after.
    body_timeout: float | None = None


class ApiError(Exception):
    """A request the API refuses: its HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_k(value: str | None, limits: Limits, what: str = "k", default: int | None = None) -> int:
    if value is None or value == "":
        return limits.default_k if default is None else default
    if not _K.fullmatch(value.strip()):
        raise ApiError(422, f"{what} must be a whole number from 1 to {limits.max_k}, got {value[:40]!r}")
    k = int(value)
    if not 1 <= k <= limits.max_k:
        raise ApiError(422, f"{what} must be from 1 to {limits.max_k} (page on with offset), got {k}")
    return k


def parse_offset(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not _K.fullmatch(value.strip()) or int(value) < 0:
        raise ApiError(422, f"offset must be a whole number from 0 up, got {value[:40]!r}")
    return int(value)


@dataclass(frozen=True)
class Page:
    """Which results one answer holds: ``k`` of them after the first ``offset``."""

    k: int
    offset: int = 0


def parse_image_id(image_id: str) -> int:
    # Only digits: '..', encoded dots, absolute paths and NUL bytes never get near the filesystem.
    if not _ID.fullmatch(image_id):
        raise ApiError(422, f"an image id is a whole number, got {image_id[:40]!r}")
    return int(image_id)


def parse_verify(value: str | None) -> int | None:
    """``?verify=K`` (spatial verification of the top K), ``?verify`` or ``?verify=true`` (100), absent: off."""
    from cbir.ann.verify import DEFAULT_VERIFY

    if value is None or value.lower() in ("false", "no", "off"):
        return None
    if value.lower() in ("", "true", "yes", "on"):
        return DEFAULT_VERIFY
    try:
        verify = int(value)
    except ValueError:
        raise ApiError(422, f"verify must be a whole number of candidates (or true), got {value[:40]!r}") from None
    if verify < 1:
        raise ApiError(422, f"verify must be at least 1 candidate, got {verify}")
    return verify


def parse_flag(value: str | None, name: str) -> bool:
    """``?name``, ``?name=true`` (on), absent or ``false`` (off)."""
    if value is None or value.lower() in ("false", "no", "off", "0"):
        return False
    if value.lower() in ("", "true", "yes", "on", "1"):
        return True
    raise ApiError(422, f"{name} is true or false, got {value[:40]!r}")


K_PARAMETER = {
    "name": "k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
    "description": "Number of results, at most 1,000 (page on with offset; a form field or JSON 'k' takes precedence); "
    "more than the index holds returns all.",
}


OFFSET_PARAMETER = {
    "name": "offset",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "default": 0},
    "description": "Results to skip: the next page starts at offset + k (a search pages at most 10,000 deep).",
}


LIMIT_PARAMETER = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "description": "Images in one page (at most 1,000; page on with offset).",
}


FILTER_PARAMETERS = [
    {
        "name": "under",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Only images in this folder or below, as results show folders (a form field or JSON 'under' takes precedence).",
    },
    {"name": "label", "in": "query", "required": False, "schema": {"type": "string"}, "description": "Only images with this label."},
    {"name": "taken_after", "in": "query", "required": False, "schema": {"type": "string", "format": "date"},
     "description": "Only images taken on or after this ISO date (or date and time); without an EXIF date, the file's modification time."},
    {"name": "taken_before", "in": "query", "required": False, "schema": {"type": "string", "format": "date"},
     "description": "Only images taken on or before this ISO date (a bare date keeps that whole day)."},
    {"name": "camera", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "Only images from a camera whose make and model contain this text, any letter case."},
]


SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Images to find (one: a plain search)"},
                    "negative_file": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Images to avoid"},
                    "positive": {"type": "array", "items": {"type": "string"}, "description": "Ids to find, 'id' or 'id:weight'"},
                    "negative": {"type": "array", "items": {"type": "string"}, "description": "Ids to avoid, 'id' or 'id:weight'"},
                    "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "offset": {"type": "integer", "minimum": 0},
                    "under": {"type": "string"},
                    "label": {"type": "string"},
                    "taken_after": {"type": "string"},
                    "taken_before": {"type": "string"},
                    "camera": {"type": "string"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "description": "One indexed image: its neighbours, itself first"},
                    "positive": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "object"}]}, "description": "Ids (or {id, weight}) to find"},
                    "negative": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "object"}]}, "description": "Ids (or {id, weight}) to avoid"},
                    "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "offset": {"type": "integer", "minimum": 0},
                    "under": {"type": "string"},
                    "label": {"type": "string"},
                    "taken_after": {"type": "string"},
                    "taken_before": {"type": "string"},
                    "camera": {"type": "string"},
                },
            }
        },
    },
}

