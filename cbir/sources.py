"""Query images that are not files: standard input and http(s) URLs.

Both arrive as bytes and go through the same safe decoder as indexing
(:func:`cbir.images.decode_image`: pixel cap, EXIF orientation). Downloads are
capped in size and time.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from cbir.errors import ImageError, UsageError
from cbir.fileio import sha256_bytes
from cbir.images import decode_image
from cbir.search import Match, QueryResult, Searcher

logger = logging.getLogger(__name__)

#: Largest query image accepted from a URL or standard input.
MAX_QUERY_BYTES = 50 * 1024 * 1024
#: Seconds to wait for a server (to connect, and between reads).
URL_TIMEOUT = 20.0
STDIN = "-"


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def read_stream(stream: BinaryIO, what: str, max_bytes: int = MAX_QUERY_BYTES) -> bytes:
    """At most ``max_bytes`` from ``stream``; :class:`ImageError` if there is more, or nothing."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"{what} is larger than {max_bytes // (1024 * 1024)} MB; not a query image")
    if not data:
        raise ImageError(f"{what} is empty")
    return data


def fetch_url(url: str, max_bytes: int = MAX_QUERY_BYTES, timeout: float = URL_TIMEOUT) -> bytes:
    """The body of an http(s) URL, capped at ``max_bytes``; :class:`ImageError` says why it failed."""
    import urllib.error
    import urllib.request

    if not is_url(url):
        raise UsageError(f"only http:// and https:// URLs can be queried: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "cbir"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ImageError(f"{url} is larger than {max_bytes // (1024 * 1024)} MB; not a query image")
            return read_stream(response, url, max_bytes)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ImageError(f"cannot fetch {url}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise ImageError(f"cannot fetch {url}: {exc.strerror or exc}") from None


def query_bytes(searcher: Searcher, data: bytes, k: int, name: str, exclude_self: bool = False) -> QueryResult:
    """Search with an encoded image held in memory (``name`` is what the result calls it)."""
    try:
        image = decode_image(data, min_side=searcher.embedder.decode_min_side)
    except ImageError as exc:
        raise ImageError(f"cannot read {name}: {exc}") from None
    vector = searcher.embedder.transform([image])
    if not exclude_self:
        return QueryResult(name, searcher.search_vectors(vector, k)[0])
    digest = sha256_bytes(data)
    searcher._effective_k(k)  # says so if k exceeds the collection
    wanted = k
    while True:
        wanted = min(wanted + 8, searcher.size)
        found = searcher.search_vectors(vector, wanted)[0]
        sha_of = {row.id: row.sha256 for row in searcher.store.catalogue.image_rows([m.id for m in found])}
        kept = [m for m in found if sha_of.get(m.id) != digest]
        if len(kept) >= k or wanted >= searcher.size:
            break
        wanted *= 4
    return QueryResult(name, [_renumber(m, n) for n, m in enumerate(kept[:k], start=1)])


def _renumber(match: Match, rank: int) -> Match:
    from dataclasses import replace

    return replace(match, rank=rank)
