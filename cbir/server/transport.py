"""How ``cbir serve`` runs uvicorn: connection limits and deadlines, generous on loopback, safe elsewhere.

uvicorn has a keep-alive timeout and a connection cap (``limit_concurrency``:
503 beyond it), but no deadline for a request's headers: a client that
trickles one byte a second holds its connection for ever. So the HTTP
protocol class is wrapped to close a connection whose next request's headers
have not all arrived within ``header_timeout`` seconds. The body has its own
deadline, in the app (:class:`BodyLimits`, ``Limits.body_timeout``: 408), as
has its size (413).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the HTTP server itself (per connection, not per request body)."""

    #: Seconds a request's headers may take to arrive (from the connection or the previous response).
    header_timeout: float
    #: Seconds a whole request body may take to arrive.
    body_timeout: float
    #: Seconds an idle keep-alive connection stays open.
    keep_alive_timeout: float
    #: Connections (and requests) at once; more get 503.
    max_connections: int
    #: Largest accepted upload, in decoded megapixels.
    max_megapixels: float

    @classmethod
    def default(cls, loopback: bool) -> "ServeSettings":
        if loopback:  # only this machine's own programs: generous
            return cls(header_timeout=60, body_timeout=600, keep_alive_timeout=30, max_connections=1000, max_megapixels=50)
        # Reachable by others: slow clients are cut off, a handful of bombs cannot exhaust memory
        # (16 MP decode to 48 MB; a 7000 x 7000 PNG of 160 KB would cost 147 MB).
        return cls(header_timeout=10, body_timeout=60, keep_alive_timeout=5, max_connections=100, max_megapixels=16)


def header_deadline_protocol(base: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) closing connections whose request headers are late.

    The timer runs from the connection's start and from the end of each
    response; a request in progress is left alone (its body has its own deadline).
    """

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _headers_late(self) -> None:
            cycle = getattr(self, "cycle", None)
            in_progress = cycle is not None and not cycle.response_complete
            if not in_progress and not self.transport.is_closing():
                self.transport.close()

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


class _BodyRefused(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


class BodyLimits:
    """Refuse request bodies over ``max_bytes`` (413) or slower than ``deadline`` seconds in all (408); pure ASGI."""

    def __init__(self, app, max_bytes: int, deadline: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.deadline = deadline

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse_body(send, self._too_large())
        received = 0
        complete = False
        started = False
        loop = asyncio.get_running_loop()
        give_up_at = None if self.deadline is None else loop.time() + self.deadline

        async def limited_receive():
            nonlocal received, complete
            if complete or give_up_at is None:  # after the body: only a disconnect is awaited
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, give_up_at - loop.time()))
                except asyncio.TimeoutError:
                    raise _BodyRefused(408, f"the request body did not arrive within {self.deadline:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyRefused as refused:
            if not started:
                await _refuse_body(send, refused)

    def _too_large(self) -> _BodyRefused:
        return _BodyRefused(413, f"request body larger than the {self.max_bytes / 2**20:.3g} MB upload limit")


async def _refuse_body(send, refused: _BodyRefused) -> None:
    body = json.dumps({"error": refused.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeadAsGet:
    """``HEAD`` wherever ``GET`` is: answered as the ``GET`` would be, headers only (RFC 9110 9.3.2); pure ASGI.

    FastAPI's routes answer only the methods they declare (Starlette's own
    add ``HEAD`` to ``GET``; FastAPI's do not), so a monitor's or a cache's
    ``HEAD /api/health`` would get 405. The body is dropped here, not only by
    uvicorn, so any ASGI server (and the test client) sends none.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        as_get = {**scope, "method": "GET"}  # a copy: the server's own scope still says HEAD

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        try:
            await self.app(as_get, receive, headers_only)
        finally:
            scope["route"] = as_get.get("route")  # which route answered, for the request metrics outside
