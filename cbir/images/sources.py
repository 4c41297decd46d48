"""Query images that are not files: standard input and http(s) URLs.

Both arrive as bytes, which :meth:`cbir.retrieval.search.Searcher.query` decodes with the
same safe decoder as indexing (pixel cap, EXIF orientation). Downloads are
capped in size and time.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from cbir.errors import CbirError, ImageError, UsageError

logger = logging.getLogger(__name__)

#: Largest query image accepted from a URL or standard input.
MAX_QUERY_BYTES = 50 * 1024 * 1024
#: Seconds a download may take in all (connecting, and every read until the last byte).
URL_TIMEOUT = 20.0
_CHUNK = 1 << 16
STDIN = "-"


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def read_stream(stream: BinaryIO, what: str, max_bytes: int | None = None) -> bytes:
    """At most ``max_bytes`` (default :data:`MAX_QUERY_BYTES`) from ``stream``; :class:`ImageError` if there is more, or nothing."""
    max_bytes = MAX_QUERY_BYTES if max_bytes is None else max_bytes
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"{what} is larger than {max_bytes // (1024 * 1024)} MB; not a query image")
    if not data:
        raise ImageError(f"{what} is empty")
    return data


def fetch_url(url: str, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
    """The body of an http(s) URL, capped at ``max_bytes`` (default :data:`MAX_QUERY_BYTES`) and
    ``timeout`` seconds in all (default :data:`URL_TIMEOUT`): a server that trickles a byte at a
    time cannot hold the query longer. :class:`ImageError` says why it failed, naming the URL."""
    import time
    import urllib.error
    import urllib.request

    max_bytes = MAX_QUERY_BYTES if max_bytes is None else max_bytes
    timeout = URL_TIMEOUT if timeout is None else timeout

    if not is_url(url):
        raise UsageError(f"only http:// and https:// URLs can be queried: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "cbir"})
    deadline = time.monotonic() + timeout
    opener, watchdog = _opener_with_deadline(timeout)
    try:
        with watchdog, opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ImageError(f"{url} is larger than {max_bytes // (1024 * 1024)} MB; not a query image")
            body = _read_until(response, url, max_bytes, deadline, timeout)
            if watchdog.fired:  # the socket was shut at the deadline: what came is not the whole answer
                raise TimeoutError
            if length is not None and length.isdigit() and len(body) < int(length):
                raise ImageError(f"cannot fetch {url}: the answer ended after {len(body)} of {int(length)} bytes")
            return body
    except urllib.error.HTTPError as exc:
        raise ImageError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ImageError(f"cannot fetch {url}: {exc.reason}") from None
    except TimeoutError:
        raise ImageError(f"cannot fetch {url}: timed out (no complete answer within {timeout:g} s)") from None
    except OSError as exc:
        if watchdog.fired:
            raise ImageError(f"cannot fetch {url}: timed out (no complete answer within {timeout:g} s)") from None
        raise ImageError(f"cannot fetch {url}: {exc.strerror or exc}") from None
    except CbirError:
        raise
    except Exception as exc:  # http.client's own errors when the watchdog cut a header short
        if watchdog.fired:
            raise ImageError(f"cannot fetch {url}: timed out (no complete answer within {timeout:g} s)") from None
        raise ImageError(f"cannot fetch {url}: {exc}") from None


class _Watchdog:
    """Shuts the connection's socket down at the deadline: a server that trickles its status line
    and headers a byte at a time beats any per-read timeout, not this."""

    def __init__(self, timeout: float):
        import threading

        self.timeout = timeout
        self.sockets: list = []
        self.fired = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        import socket

        self.fired = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()


def _opener_with_deadline(timeout: float):
    """A urllib opener whose connections report their socket to a :class:`_Watchdog`."""
    import http.client
    import urllib.request

    watchdog = _Watchdog(timeout)

    def watched(base):
        class Connection(base):
            def connect(self):
                super().connect()
                watchdog.sockets.append(self.sock)

        return Connection

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler), watchdog


def _read_until(response, url: str, max_bytes: int, deadline: float, timeout: float) -> bytes:
    """The body, read as it arrives (``read1``: a trickle returns each byte) until ``deadline``."""
    import time

    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    chunks, received = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ImageError(f"cannot fetch {url}: timed out (the download did not finish within {timeout:g} s)")
        if sock is not None:
            sock.settimeout(remaining)  # no single read outlasts the deadline either
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
        if received > max_bytes:
            raise ImageError(f"{url} is larger than {max_bytes // (1024 * 1024)} MB; not a query image")
    if not received:
        raise ImageError(f"{url} is empty")
    return b"".join(chunks)
