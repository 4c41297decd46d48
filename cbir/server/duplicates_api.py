"""The duplicate review over HTTP: the groups with suggested keepers, and the export of a person's choices.

``GET /api/indexes/{name}/duplicates`` finds the groups
(:func:`cbir.retrieval.duplicates.find_duplicates`: exact copies, then near
duplicates at the index's default threshold or ``?threshold=``), each file
with its id and thumbnail URL. ``POST .../duplicates/export?format=json|csv|nul``
takes the groups back as the page's person left them (``{"groups": [{"tier",
"ids", "keep", "min_score"}]}``) and returns the review as JSON, CSV, or the
NUL-separated list of the files not kept, for a script. Nothing here deletes
or moves a file, and the export is formatted by the library, as the CLI's is.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cbir.display import display_path
from cbir.server.access import Access, private_path, public_path
from cbir.server.live import IndexPool
from cbir.server.queries import RequestError
from cbir.store.catalogue import ImageFilter

#: Files one export may name (a body of ids, well under the upload cap).
MAX_EXPORT_FILES = 100_000
_FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "nul": "application/octet-stream"}


class _Found:
    """The last few duplicate searches, by index state and parameters: the page asks again on every visit."""

    def __init__(self, size: int = 8):
        self._lock = threading.Lock()
        self._entries: OrderedDict = OrderedDict()
        self._size = size

    def get(self, key, compute: Callable[[], Any]):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = compute()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value


def add_duplicate_routes(app: FastAPI, pool: IndexPool, access: Access, in_thread, page: Callable[[], Response]) -> None:
    """Register the review's page (``page`` answers it) and its two endpoints on ``app``
    (``in_thread``: runs a blocking call off the event loop)."""
    found_cache = _Found()

    @app.get("/duplicates", include_in_schema=False)
    def review_page() -> Response:
        return page()

    @app.get("/api/indexes/{name}/duplicates", tags=["api"], summary="Exact copies and near-duplicates, each with a suggested keeper")
    async def duplicates(
        name: str, threshold: str | None = None, exact: bool = False, under: str | None = None, label: str | None = None
    ) -> JSONResponse:
        live = pool.get(name)
        limit = _parse_threshold(threshold)
        return JSONResponse(await in_thread(_find, live, limit, exact, under or None, label or None, access.show_paths, found_cache))

    @app.post(
        "/api/indexes/{name}/duplicates/export",
        tags=["api"],
        summary="A reviewed set of groups as JSON, CSV or the NUL-separated files not kept (nothing is deleted)",
    )
    async def export(name: str, request: Request, format: str = "json") -> Response:
        if format not in _FORMATS:
            raise RequestError(422, f"format is one of {', '.join(_FORMATS)}, got {format[:20]!r}")
        reviewed = _read_review(await request.body())
        live = pool.get(name)
        body = await in_thread(_export, live, reviewed, format, access.show_paths)
        headers = {"Content-Disposition": f'attachment; filename="{name}-{"not-kept.txt" if format == "nul" else "duplicates." + format}"'}
        return Response(body, media_type=_FORMATS[format], headers=headers if format != "json" else None)


def _parse_threshold(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        threshold = float(value)
    except ValueError:
        raise RequestError(422, f"threshold is a cosine similarity from -1 to 1, got {value[:40]!r}") from None
    if not -1.0 <= threshold <= 1.0:
        raise RequestError(422, f"threshold is a cosine similarity from -1 to 1, got {threshold}")
    return threshold


def _shower(searcher, show_paths: bool, exact: bool = False):
    """How a stored path is shown: as it is (``exact``: the bytes a script needs), escaped for JSON, or
    relative to its indexed folder where the server may not show absolute paths."""
    if not show_paths:
        roots = searcher.indexed_roots()
        return lambda path: public_path(path, roots)
    return (lambda path: path) if exact else (lambda path: display_path(path, controls=False))


def _find(live, threshold, exact_only: bool, under, label, show_paths: bool, cache: _Found) -> dict[str, Any]:
    from cbir.retrieval.duplicates import find_duplicates
    from cbir.retrieval.keepers import review_to_dict

    with live.use() as searcher:
        folder = None if under is None else private_path(under.rstrip("/") or under, searcher.indexed_roots())
        only = ImageFilter(under=folder, label=label) if folder is not None or label is not None else None
        show = _shower(searcher, show_paths)
        # The searcher itself, not its id: a new one after a reload could reuse a freed id.
        key = (searcher, threshold, exact_only, folder, label)
        found = cache.get(key, lambda: find_duplicates(live.name, threshold, live.path.parent, image_filter=only, near=not exact_only))
    body = review_to_dict(found.groups, show)
    base = f"/api/indexes/{live.name}"
    for group in (*body["exact"], *body["near"]):
        for file in group["files"]:
            file["thumbnail_url"] = f"{base}/thumbnails/{file['id']}"
            file["image_url"] = f"{base}/images/{file['id']}"
    return {"index": live.name, "threshold": found.threshold, "threshold_source": found.threshold_source, **body}


def _read_review(raw: bytes):
    from cbir.retrieval.duplicates import ReviewedGroup

    try:
        data = json.loads(raw)
        groups = data["groups"]
        if not isinstance(groups, list):
            raise TypeError
        reviewed = [
            ReviewedGroup(str(g["tier"]), tuple(_whole(i) for i in g["ids"]), _whole(g["keep"]), float(g.get("min_score", 1.0)))
            for g in groups
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RequestError(
            422, 'send JSON {"groups": [{"tier": "exact" or "near", "ids": [image ids], "keep": one of them, "min_score": number}]}'
        ) from None
    if sum(len(g.ids) for g in reviewed) > MAX_EXPORT_FILES:
        raise RequestError(413, f"at most {MAX_EXPORT_FILES} files in one export")
    return reviewed


def _whole(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _export(live, reviewed, format: str, show_paths: bool) -> bytes:
    from cbir.retrieval.duplicates import reviewed_groups
    from cbir.retrieval.keepers import files_not_kept, nul_separated, review_csv, review_to_dict

    with live.use() as searcher:
        groups = reviewed_groups(searcher, reviewed)
        show, exact = _shower(searcher, show_paths), _shower(searcher, show_paths, exact=True)
    if format == "csv":
        return review_csv(groups, show).encode("utf-8")
    if format == "nul":
        return nul_separated([exact(path) for path in files_not_kept(groups)])
    return json.dumps({"index": live.name, **review_to_dict(groups, show)}, ensure_ascii=False).encode("utf-8")
