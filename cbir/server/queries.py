"""What a search request asks for: its examples, k and filter, read from a form or JSON (no searching here).

A request is one of:

* one uploaded image (form field ``file``), searched as before, batched with
  concurrent uploads;
* ``{"id": n}``: an indexed image's neighbours, itself first;
* several examples, Qdrant's *recommend*: images to find (``file`` fields,
  ``positive`` ids) and images to avoid (``negative_file`` fields,
  ``negative`` ids), ids optionally weighted (``7:2`` in a form, ``{"id": 7,
  "weight": 2}`` in JSON); the examples themselves are left out of the results.

Each may carry the filters of :data:`FILTER_FIELDS`: ``under`` (a folder, as
results show it), ``label``, ``taken_after`` / ``taken_before`` (ISO dates)
and ``camera`` (part of make and model); and ``offset``: the results to skip
(the next page).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cbir.retrieval.examples import MAX_EXAMPLES, Example

_WEIGHTED_ID = re.compile(r"\s*([0-9]{1,18})(?::([0-9]*\.?[0-9]+))?\s*")
#: A search's filters (:class:`cbir.store.catalogue.ImageFilter`'s fields), as form fields, JSON keys or query parameters.
FILTER_FIELDS = ("under", "label", "taken_after", "taken_before", "camera")
_JSON_FIELDS = {"id", "k", "offset", "positive", "negative", *FILTER_FIELDS}


class RequestError(Exception):
    """A request that cannot be read: its HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class SearchRequest:
    k: str | None = None
    offset: str | None = None
    under: str | None = None
    label: str | None = None
    taken_after: str | None = None
    taken_before: str | None = None
    camera: str | None = None
    #: ``(bytes, filename)`` of uploaded images to find, and to avoid.
    uploads: list[tuple[bytes, str]] = field(default_factory=list)
    avoid_uploads: list[tuple[bytes, str]] = field(default_factory=list)
    positive_ids: list[Example] = field(default_factory=list)
    negative_ids: list[Example] = field(default_factory=list)
    #: The ``{"id": n}`` form: one indexed image, itself included.
    image_id: int | None = None

    @property
    def single_upload(self) -> bool:
        return len(self.uploads) == 1 and not (self.avoid_uploads or self.positive_ids or self.negative_ids)

    def examples(self) -> tuple[list[Example], list[Example]]:
        positives = [Example(data) for data, _ in self.uploads] + self.positive_ids
        negatives = [Example(data) for data, _ in self.avoid_uploads] + self.negative_ids
        if not positives:
            raise RequestError(422, "give at least one image to find ('file' or 'positive'); negatives only say what to avoid")
        if len(positives) + len(negatives) > MAX_EXAMPLES:
            raise RequestError(422, f"at most {MAX_EXAMPLES} examples in one search")
        return positives, negatives

    def name(self) -> str:
        parts = [name for _, name in self.uploads] + [f"id {e.source}" for e in self.positive_ids]
        parts += [f"not {name}" for _, name in self.avoid_uploads] + [f"not id {e.source}" for e in self.negative_ids]
        return ", ".join(parts)


async def read_form(request, max_files: int = MAX_EXAMPLES) -> SearchRequest:
    from starlette.datastructures import UploadFile

    out = SearchRequest()
    async with request.form(max_files=max_files, max_fields=2 * MAX_EXAMPLES + 8) as form:
        for key, value in form.multi_items():
            if key in ("file", "negative_file"):
                if not isinstance(value, UploadFile):
                    raise RequestError(422, f"field {key!r} must be an uploaded file, not text")
                (out.uploads if key == "file" else out.avoid_uploads).append((await value.read(), value.filename or "upload"))
            elif isinstance(value, UploadFile):
                raise RequestError(422, f"field {key!r} must be text, not a file")
            elif key in ("positive", "negative"):
                (out.positive_ids if key == "positive" else out.negative_ids).append(_weighted_id(value))
            elif key in ("k", "offset") or key in FILTER_FIELDS:
                setattr(out, key, value)
    if not (out.uploads or out.positive_ids):
        raise RequestError(422, "the form has no field 'file' holding the image (or 'positive' ids)")
    return out


def read_json(body: bytes) -> SearchRequest:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(422, 'the JSON body must be an object: {"id": <image id>, "k": <number>}')
    unknown = sorted(set(payload) - _JSON_FIELDS)
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(map(repr, sorted(_JSON_FIELDS)))}")
    out = SearchRequest()
    if "id" in payload:
        if "positive" in payload or "negative" in payload:
            raise RequestError(422, "give 'id' or 'positive'/'negative' examples, not both")
        out.image_id = _whole_id(payload["id"])
    else:
        out.positive_ids = [_json_example(e) for e in _list(payload, "positive")]
        out.negative_ids = [_json_example(e) for e in _list(payload, "negative")]
        if not out.positive_ids:
            raise RequestError(422, "'id' must be the whole-number id of an indexed image (or give 'positive' ids)")
    for key in ("k", "offset"):
        number = payload.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise RequestError(422, f"'{key}' must be a whole number")
        setattr(out, key, None if number is None else str(number))
    for key in FILTER_FIELDS:
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            raise RequestError(422, f"'{key}' must be a string")
        setattr(out, key, value)
    return out


def _list(payload: dict, key: str) -> list:
    value = payload.get(key, [])
    if not isinstance(value, list):
        raise RequestError(422, f"'{key}' must be a list of image ids")
    return value


def _whole_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, "'id' must be the whole-number id of an indexed image")
    if not -(2**63) <= value < 2**63:  # SQLite's integers: anything wider cannot be an id
        raise RequestError(422, f"'id' must be a 64-bit whole number, got {str(value)[:40]}")
    return value


def _json_example(value: Any) -> Example:
    if isinstance(value, dict):
        weight = value.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise RequestError(422, "an example's 'weight' must be a number above 0")
        return Example(_whole_id(value.get("id")), float(weight))
    return Example(_whole_id(value))


def _weighted_id(text: str) -> Example:
    match = _WEIGHTED_ID.fullmatch(text)
    if match is None or (match[2] is not None and float(match[2]) <= 0):
        raise RequestError(422, f"an example id is a whole number, optionally ':weight' above 0; got {text[:40]!r}")
    return Example(int(match[1]), float(match[2]) if match[2] else 1.0)
