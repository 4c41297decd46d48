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
import shlex
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cbir._version import __version__
from cbir.display import display_path
from cbir.errors import CbirError, ImageError, IndexNotFoundError, NotInIndexError, UsageError
from cbir.cpus import usable_cores
from cbir.server.access import (
    Access, AccessGuard, public_description, public_path, public_text, without_weight_paths,
)
from cbir.server.duplicates_api import add_duplicate_routes
from cbir.server.live import IndexPool, LiveIndex, ThumbnailCache
from cbir.server.media import UnsatisfiableRange, byte_range
from cbir.server.metrics import RequestMetrics, ServerMetrics
from cbir.server.parameters import (
    FILTER_PARAMETERS, K_PARAMETER, LIMIT_PARAMETER, OFFSET_PARAMETER, SEARCH_BODY, ApiError, Limits, Page,
    parse_flag, parse_image_id, parse_k, parse_offset, parse_verify,
)
from cbir.server.searching import add_links, measured_search, requested_filter
from cbir.server.queries import FILTER_FIELDS, RequestError, read_form, read_json
from cbir.store.locations import default_index_dir
from cbir.server.transport import BodyLimits, HeadAsGet

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_PAGE_HEADERS = {
    # The page needs nothing from elsewhere: say so, so an injected tag could not load anything either.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


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
    # A search's other uploads decode here, beside its own thread (a pool of its own: never waits for itself).
    decoders = ThreadPoolExecutor(usable_cores(), thread_name_prefix="cbir-decode")
    metrics = ServerMetrics()

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
            decoders.shutdown(wait=False, cancel_futures=True)

    # Swagger UI's script and CSS from the fastapi-offline package, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="cbir",
        version=__version__,
        summary="Search image collections by example image.",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.metrics = metrics
    app.add_middleware(BodyLimits, max_bytes=limits.max_upload_bytes, deadline=limits.body_timeout)
    app.add_middleware(HeadAsGet)
    app.add_middleware(AccessGuard, access=access)  # before any body is read
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: refused requests count too

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
        openapi_extra={"requestBody": SEARCH_BODY, "parameters": [K_PARAMETER, OFFSET_PARAMETER, *FILTER_PARAMETERS]},
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
        k = parse_k(asked.k if asked.k is not None else params.get("k"), limits)
        offset = parse_offset(asked.offset if asked.offset is not None else params.get("offset"))
        if offset + k > limits.max_depth:
            raise ApiError(422, f"a search pages at most {limits.max_depth} results deep: offset + k is {offset + k}")
        filters = {key: getattr(asked, key) if getattr(asked, key) is not None else params.get(key) for key in FILTER_FIELDS}
        verify = parse_verify(params.get("verify"))
        explain = parse_flag(params.get("explain"), "explain")
        page = Page(k, offset)
        body, stages = await in_search_thread(
            measured_search, live, asked, page, filters, limits, access.show_paths, verify, decoders, explain
        )
        metrics.observe_search(live.name, asked.kind, stages)
        return JSONResponse(body)  # plain dicts and floats: FastAPI's encoder pass is not needed

    @app.get(
        "/api/indexes/{name}/images",
        tags=["api"],
        summary="The indexed images without a query, a page at a time, in path order; within a folder or label",
        openapi_extra={"parameters": [OFFSET_PARAMETER, LIMIT_PARAMETER, *FILTER_PARAMETERS]},
    )
    def browse(name: str, request: Request) -> JSONResponse:
        params = request.query_params
        limit = parse_k(params.get("limit"), limits, what="limit", default=100)
        offset = parse_offset(params.get("offset"))
        with pool.get(name).use() as searcher:
            page = searcher.browse(offset, limit, requested_filter(searcher, {key: params.get(key) for key in FILTER_FIELDS}))
            roots = None if access.show_paths else searcher.indexed_roots()
            body = page.to_dict()
            add_links(body["results"], page.images, f"/api/indexes/{name}", roots)
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
        number = parse_image_id(image_id)
        try:
            data = thumbnails.get(name, number, lambda: _open_file(live, image_id))
        except ImageError as exc:
            raise ApiError(404, f"no thumbnail for image {number}: {exc}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/metrics", tags=["operations"], summary="Requests, errors and search stage times, in Prometheus' text format")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=metrics.content_type)

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


def _open_file(live: LiveIndex, image_id: str):
    """The row of an image and its file, opened only while it is still the file that was indexed."""
    number = parse_image_id(image_id)
    with live.use() as searcher:
        return searcher.open_image_file(number)


def _chunks(file, size: int, block: int = 1 << 16):
    """The first ``size`` bytes of an open file (what was checked), then the file closed."""
    with file:
        while size > 0 and (data := file.read(min(block, size))):
            size -= len(data)
            yield data


