"""The HTTP API and web page of ``cbir serve``: a thin FastAPI layer over :mod:`cbir.retrieval.search`.

Indexes are opened once, in the app's lifespan, and shared by every request
(see :mod:`cbir.server.live`). Decoding and the model run in the thread pool,
never on the event loop. Files are served only by catalogue id, and only while
they are still the files that were indexed (:mod:`cbir.indexed_files`). Every bad
input gets a JSON error ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mimetypes
import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cbir._version import __version__
from cbir.display import display_path
from cbir.errors import CbirError, ImageError, IndexNotFoundError, NotInIndexError, UsageError
from cbir.images.decode import decode_image
from cbir.cpus import usable_cores
from cbir.server.access import (
    Access, AccessGuard, private_path, public_description, public_path, public_text, without_weight_paths,
)
from cbir.server.duplicates_api import add_duplicate_routes
from cbir.server.live import IndexPool, LiveIndex, ThumbnailCache
from cbir.server.media import UnsatisfiableRange, byte_range
from cbir.images.video import describe_frame
from cbir.server.queries import FILTER_FIELDS, RequestError, SearchRequest, read_form, read_json
from cbir.store.catalogue import ImageFilter
from cbir.store.locations import default_index_dir
from cbir.server.transport import BodyLimits

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_ID = re.compile(r"[0-9]{1,18}")
_K = re.compile(r"[+-]?[0-9]{1,18}")
_PAGE_HEADERS = {
    # The page needs nothing from elsewhere: say so, so an injected tag could not load anything either.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


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


def _status_of(exc: CbirError) -> int:
    if isinstance(exc, (IndexNotFoundError, NotInIndexError)):
        return 404
    if isinstance(exc, ImageError):
        return 422
    if isinstance(exc, UsageError):
        return 400
    return 503  # an index that cannot be read right now: the server's problem, not the request's


def create_app(
    index_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    *,
    pool: IndexPool | None = None,
    limits: Limits = Limits(),
    refresh_interval: float = 1.0,
    access: Access = Access(),
) -> FastAPI:
    """The ASGI app serving the indexes in ``index_dir`` (all of them, or only ``names``).

    Pass an already opened ``pool`` to open the indexes before the server
    starts (as ``cbir serve`` does, to report a bad index in one line).
    ``access`` says which ``Host`` headers it answers, whether it needs a
    token and whether it may show absolute paths (:mod:`cbir.server.access`).
    """
    pool = pool or IndexPool(index_dir, names, refresh_interval)
    thumbnails = ThumbnailCache()
    # A few requests per core decoding at once keep every core busy and let
    # searches batch; more would only queue inside the process (memory, tails).
    # An executor of its own: its C queue hands work over with less GIL than anyio's.
    searches = ThreadPoolExecutor(limits.search_threads or min(32, 3 * usable_cores()), thread_name_prefix="cbir-search")

    async def in_search_thread(function, *args):
        return await asyncio.get_running_loop().run_in_executor(searches, functools.partial(function, *args))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not pool.is_open:
            await run_in_threadpool(pool.open)
        pool.start_refreshing()
        try:
            yield
        finally:
            await run_in_threadpool(pool.close)
            searches.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="cbir",
        version=__version__,
        summary="Search image collections by example image.",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.add_middleware(BodyLimits, max_bytes=limits.max_upload_bytes, deadline=limits.body_timeout)
    app.add_middleware(AccessGuard, access=access)  # outermost: before any body is read

    def shown(request: Request, message: str) -> str:
        """An error message as this server may show it (no absolute paths unless allowed)."""
        message = display_path(message, controls=False, backslashes=False)  # a file name's undecodable bytes as \xNN
        if access.show_paths:
            return message
        roots: list[str] = []
        try:
            with pool.get(request.path_params.get("name", "")).use() as searcher:
                roots = searcher.indexed_roots()
        except CbirError:
            pass  # no such index (any more): every path is shortened to its last part
        return public_text(message, roots)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": shown(request, str(exc))}, status_code=exc.status)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse({"error": shown(request, str(exc))}, status_code=exc.status)

    @app.exception_handler(CbirError)
    async def cbir_error(request: Request, exc: CbirError):
        return JSONResponse({"error": shown(request, str(exc))}, status_code=_status_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)

    # -- API -----------------------------------------------------------------
    @app.get("/api/health", tags=["api"], summary="Liveness and the indexes served")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "indexes": pool.names_served()}

    # How to make an index this server picks up: what the page shows while it serves none.
    build_hint = "cbir index FOLDER --name NAME"
    if pool.index_dir.resolve() != default_index_dir().resolve() and access.show_paths:
        build_hint += f" --index-dir {shlex.quote(display_path(str(pool.index_dir), controls=False))}"

    @app.get("/api/indexes", tags=["api"], summary="The indexes served: name, extractor, size; and how to build one")
    def indexes() -> dict[str, Any]:
        described = []
        for name in pool.names_served():
            try:
                with pool.get(name).use() as searcher:
                    description = without_weight_paths(searcher.describe())
                    if not access.show_paths:
                        description = public_description(description, searcher.indexed_roots())
                    else:  # names that are not UTF-8 cannot travel in JSON as they are
                        description["removed_paths"] = [display_path(p, controls=False) for p in description["removed_paths"]]
            except IndexNotFoundError:  # dropped since the listing
                continue
            described.append(description)
        return {"indexes": described, "build": build_hint}

    @app.post(
        "/api/indexes/{name}/search",
        tags=["api"],
        summary="Search by uploaded images and/or ids of indexed images (to find and to avoid), within a folder or label",
        openapi_extra={"requestBody": _SEARCH_BODY, "parameters": [_K_PARAMETER, _OFFSET_PARAMETER, *_FILTER_PARAMETERS]},
    )
    async def search(name: str, request: Request) -> JSONResponse:
        live = pool.get(name)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type == "multipart/form-data":
                asked = await read_form(request)
            elif content_type == "application/json":
                asked = read_json(await request.body())
            else:
                raise ApiError(
                    415,
                    "send images as multipart/form-data (field 'file', optional 'k', 'under', 'label', 'positive', "
                    '\'negative\', \'negative_file\') or JSON {"id": <image id>, "k": <number>} / {"positive": [ids], "negative": [ids]}',
                )
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; just stop
        params = request.query_params
        k = _parse_k(asked.k if asked.k is not None else params.get("k"), limits)
        offset = _parse_offset(asked.offset if asked.offset is not None else params.get("offset"))
        if offset + k > limits.max_depth:
            raise ApiError(422, f"a search pages at most {limits.max_depth} results deep: offset + k is {offset + k}")
        filters = {key: getattr(asked, key) if getattr(asked, key) is not None else params.get(key) for key in FILTER_FIELDS}
        verify = _parse_verify(params.get("verify"))
        page = _Page(k, offset)
        body = await in_search_thread(_search, live, asked, page, filters, limits, access.show_paths, verify)
        return JSONResponse(body)  # plain dicts and floats: FastAPI's encoder pass is not needed

    @app.get(
        "/api/indexes/{name}/images",
        tags=["api"],
        summary="The indexed images without a query, a page at a time, in path order; within a folder or label",
        openapi_extra={"parameters": [_OFFSET_PARAMETER, _LIMIT_PARAMETER, *_FILTER_PARAMETERS]},
    )
    def browse(name: str, request: Request) -> JSONResponse:
        params = request.query_params
        limit = _parse_k(params.get("limit"), limits, what="limit", default=100)
        offset = _parse_offset(params.get("offset"))
        with pool.get(name).use() as searcher:
            page = searcher.browse(offset, limit, _image_filter(searcher, {key: params.get(key) for key in FILTER_FIELDS}))
            roots = None if access.show_paths else searcher.indexed_roots()
            body = page.to_dict()
            _add_links(body["results"], page.images, f"/api/indexes/{name}", roots)
        return JSONResponse({"index": name, "limit": limit, **body})

    @app.get("/api/indexes/{name}/facets", tags=["api"], summary="What a search can be restricted to: labels, folders, cameras and dates")
    def facets(name: str) -> dict[str, Any]:
        with pool.get(name).use() as searcher:
            roots = None if access.show_paths else searcher.indexed_roots()
            folders = searcher.folders()
            return {
                "index": name,
                "labels": [{"label": label, "count": count} for label, count in searcher.label_counts().items()],
                "folders": [display_path(f if roots is None else public_path(f, roots), controls=False) for f in folders],
                "cameras": [{"camera": camera, "count": count} for camera, count in searcher.cameras()],
                "taken": dict(zip(("first", "last"), searcher.taken_span())),
            }

    @app.get("/api/indexes/{name}/images/{image_id}", tags=["api"], summary="The original file of an indexed image")
    def original(name: str, image_id: str, request: Request) -> Response:
        row, file = _open_file(pool.get(name), image_id)
        size = os.fstat(file.fileno()).st_size
        media_type = mimetypes.guess_type(row.path)[0] or "application/octet-stream"
        headers = {"Content-Length": str(size), "X-Content-Type-Options": "nosniff", "Accept-Ranges": "bytes"}
        try:  # a part of it: what a <video> asks for to seek (a video's frame plays from its time)
            part = byte_range(request.headers.get("range"), size)
        except UnsatisfiableRange:
            file.close()
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        if part is None:
            return StreamingResponse(_chunks(file, size), media_type=media_type, headers=headers)
        first, last = part
        file.seek(first)
        headers.update({"Content-Length": str(last - first + 1), "Content-Range": f"bytes {first}-{last}/{size}"})
        return StreamingResponse(_chunks(file, last - first + 1), status_code=206, media_type=media_type, headers=headers)

    @app.get("/api/indexes/{name}/thumbnails/{image_id}", tags=["api"], summary="A small JPEG of an indexed image")
    def thumbnail(name: str, image_id: str) -> Response:
        live = pool.get(name)
        number = _image_id(image_id)
        try:
            data = thumbnails.get(name, number, lambda: _open_file(live, image_id))
        except ImageError as exc:
            raise ApiError(404, f"no thumbnail for image {number}: {exc}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # -- the page --------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={**_PAGE_HEADERS, "Cache-Control": "no-cache"})

    # The duplicate review: its own page and endpoints (cbir.server.duplicates_api).
    add_duplicate_routes(
        app, pool, access, in_search_thread,
        page=lambda: FileResponse(STATIC / "duplicates.html", headers={**_PAGE_HEADERS, "Cache-Control": "no-cache"}),
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# -- request parsing -----------------------------------------------------------
def _parse_k(value: str | None, limits: Limits, what: str = "k", default: int | None = None) -> int:
    if value is None or value == "":
        return limits.default_k if default is None else default
    if not _K.fullmatch(value.strip()):
        raise ApiError(422, f"{what} must be a whole number from 1 to {limits.max_k}, got {value[:40]!r}")
    k = int(value)
    if not 1 <= k <= limits.max_k:
        raise ApiError(422, f"{what} must be from 1 to {limits.max_k} (page on with offset), got {k}")
    return k


def _parse_offset(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not _K.fullmatch(value.strip()) or int(value) < 0:
        raise ApiError(422, f"offset must be a whole number from 0 up, got {value[:40]!r}")
    return int(value)


@dataclass(frozen=True)
class _Page:
    """Which results one answer holds: ``k`` of them after the first ``offset``."""

    k: int
    offset: int = 0


def _image_id(image_id: str) -> int:
    # Only digits: '..', encoded dots, absolute paths and NUL bytes never get near the filesystem.
    if not _ID.fullmatch(image_id):
        raise ApiError(422, f"an image id is a whole number, got {image_id[:40]!r}")
    return int(image_id)


def _open_file(live: LiveIndex, image_id: str):
    """The row of an image and its file, opened only while it is still the file that was indexed."""
    number = _image_id(image_id)
    with live.use() as searcher:
        return searcher.open_image_file(number)


def _chunks(file, size: int, block: int = 1 << 16):
    """The first ``size`` bytes of an open file (what was checked), then the file closed."""
    with file:
        while size > 0 and (data := file.read(min(block, size))):
            size -= len(data)
            yield data


def _parse_verify(value: str | None) -> int | None:
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


# -- searching (in the thread pool) ---------------------------------------------
def _image_filter(searcher, filters: dict[str, str | None]) -> ImageFilter | None:
    """The filter a request asks for (:data:`FILTER_FIELDS`; a folder as results show it), or ``None``: the one
    place a search and a listing read it. A date that is not ISO: :class:`UsageError`, a 400."""
    filters = {key: value for key, value in filters.items() if value}
    if not filters:
        return None
    under = filters.get("under")
    folder = None if under is None else private_path(under.rstrip("/") or under, searcher.indexed_roots())
    return ImageFilter(**{**filters, "under": folder})


def _search(
    live: LiveIndex, asked: SearchRequest, page: _Page, filters: dict, limits: Limits, show_paths: bool, verify: int | None = None
) -> dict[str, Any]:
    """One request's search: the batched single upload, an id, or several examples, with ``filters`` (:data:`FILTER_FIELDS`)."""
    with live.use() as searcher:
        only = _image_filter(searcher, filters)
    if asked.image_id is not None:
        return _search_id(live, asked.image_id, page, show_paths, only, verify)
    if asked.single_upload:
        data, filename = asked.uploads[0]
        return _search_upload(live, data, filename, page, limits, show_paths, only, verify)
    return _search_examples(live, asked, page, limits, show_paths, only)


def _search_examples(live: LiveIndex, asked: SearchRequest, page: _Page, limits: Limits, show_paths: bool, only) -> dict[str, Any]:
    from cbir.retrieval.examples import Example

    positives, negatives = asked.examples()
    with live.use() as searcher:
        decoded = {}
        for data, filename in [*asked.uploads, *asked.avoid_uploads]:
            try:
                decoded[id(data)] = decode_image(data, min_side=searcher.embedder.decode_min_side, max_pixels=limits.max_pixels)
            except ImageError as exc:
                raise ImageError(f"the upload {filename[:100]!r} cannot be used: {exc}") from None
        as_arrays = lambda examples: [Example(decoded.get(id(e.source), e.source), e.weight) for e in examples]  # noqa: E731
        run = lambda n: searcher.query_examples(  # noqa: E731
            as_arrays(positives), as_arrays(negatives), n, image_filter=only, exclude_examples=True, name=asked.name()
        )
        body = _results(live, searcher, run, page, show_paths, only)
        body["positive"] = [int(e.source) for e in asked.positive_ids]
        body["negative"] = [int(e.source) for e in asked.negative_ids]
        return body


def _search_upload(
    live: LiveIndex, data: bytes, filename: str, page: _Page, limits: Limits, show_paths: bool, only=None, verify: int | None = None
) -> dict[str, Any]:
    with live.use() as shared:
        searcher = shared.verifying(verify)  # a view for this request: verified matches say so
        with live.batcher.preparing(searcher):
            try:
                image = decode_image(data, min_side=searcher.decode_min_side, max_pixels=limits.max_pixels)
            except ImageError as exc:
                raise ImageError(f"the upload {filename[:100]!r} cannot be used: {exc}") from None
            item = searcher.prepare(image)
        return _results(live, searcher, lambda n: live.batcher.query(searcher, item, n, filename, only), page, show_paths, only)


def _search_id(live: LiveIndex, image_id: int, page: _Page, show_paths: bool, only=None, verify: int | None = None) -> dict[str, Any]:
    with live.use() as shared:
        searcher = shared.verifying(verify)
        row = searcher.image_row(image_id)  # 404 before anything else
        body = _results(live, searcher, lambda n: searcher.query_id(image_id, n, image_filter=only), page, show_paths, only)
        body["query_id"] = image_id
        body["query"] = describe_frame(row.path if show_paths else public_path(row.path, searcher.indexed_roots()), row.time)
        return body


def _results(live: LiveIndex, searcher, run, page: _Page, show_paths: bool = True, only=None) -> dict[str, Any]:
    # k beyond the collection (or what the filter lets through) returns all of it, as a correct answer should;
    # a page past the end is empty. Ranks count from the first result of all, not of the page.
    matching = searcher.count_matching(only)
    effective = max(0, min(page.k, matching - page.offset))
    if effective == 0:
        return {"index": live.name, "query": None, "k": 0, "offset": page.offset, "results": [], "matching": matching}
    result = run(page.offset + effective)
    shown = result.results[page.offset :]
    body = {"query": display_path(result.query, controls=False), "results": [match.to_dict() for match in shown]}
    _add_links(body["results"], shown, f"/api/indexes/{live.name}", None if show_paths else searcher.indexed_roots())
    return {"index": live.name, "k": len(shown), "offset": page.offset, "matching": matching, **body}


def _add_links(items: list[dict], matches, base: str, roots) -> None:
    """Each result's id and the addresses of its file and thumbnail; paths shown relative to ``roots`` unless ``None``."""
    for item, match in zip(items, matches):
        item["id"] = match.id
        if roots is not None:
            item["path"] = public_path(match.path, roots)
            item["folder"] = public_path(match.folder, roots)
        item["image_url"] = f"{base}/images/{match.id}"
        item["thumbnail_url"] = f"{base}/thumbnails/{match.id}"


_K_PARAMETER = {
    "name": "k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
    "description": "Number of results, at most 1,000 (page on with offset; a form field or JSON 'k' takes precedence); "
    "more than the index holds returns all.",
}
_OFFSET_PARAMETER = {
    "name": "offset",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "default": 0},
    "description": "Results to skip: the next page starts at offset + k (a search pages at most 10,000 deep).",
}
_LIMIT_PARAMETER = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "description": "Images in one page (at most 1,000; page on with offset).",
}
_FILTER_PARAMETERS = [
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
_SEARCH_BODY = {
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
