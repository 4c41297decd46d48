"""Who may talk to the server: the ``Host`` it answers to, and an optional token.

A page on any web site can make the browser send requests to
``127.0.0.1:8000`` under a name of its own (DNS rebinding); checking the
``Host`` header against the address the server is bound to defeats that. A
server other machines can reach also asks for a token, sent as
``Authorization: Bearer TOKEN``, ``X-CBIR-Token: TOKEN`` or the
``cbir_token`` cookie the page keeps. ``GET /?token=TOKEN`` sets that cookie
and sends the browser on to the page, so the address ``cbir serve`` prints
opens with one click.

A server others can reach shows no absolute server path (:func:`public_path`,
:func:`public_text`): photos are named relative to the indexed folders, the
weights file by its name.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Sequence

from cbir.errors import UsageError
from cbir.display import display_path
from cbir.store.locations import is_under

COOKIE = "cbir_token"
#: What needs no token: the page and its assets (the page asks for the token), nothing with data.
_OPEN_PATHS = re.compile(r"/(duplicates|static/.*|favicon\.ico)?")  # the pages themselves hold nothing private
#: RFC 6750 token68: safe in a header, a cookie and a URL without quoting.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{8,200}=*")


@dataclass(frozen=True)
class Access:
    """The access rules of one server.

    ``allowed_hosts``: the ``Host`` headers answered (``None``: any); an entry
    without a port allows any port. ``token``: required on every request but
    the page's own, if set. ``show_paths``: whether responses and errors may
    show absolute server paths (index folder, photo folders, weights file);
    if not, photo paths are shown relative to the indexed folders.
    """

    allowed_hosts: tuple[str, ...] | None = None
    token: str | None = None
    show_paths: bool = True


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) only ever accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def allowed_hosts_for(host: str, port: int, extra: Sequence[str] = ()) -> tuple[str, ...] | None:
    """The ``Host`` headers a server bound to ``host:port`` answers to (``None``: any).

    Loopback: the loopback names with the port. A wildcard bind (``0.0.0.0``)
    is reached under names the server cannot know, so any, unless ``extra``
    (``--allowed-host``) lists them. Another address: itself, plus ``extra``.
    """
    names = [name.lower() for name in extra]
    for name in names:
        if not re.fullmatch(r"[a-z0-9.-]+(:[0-9]{1,5})?|\[[0-9a-f:.]+\](:[0-9]{1,5})?", name):
            raise UsageError(f"--allowed-host takes a host name or address, optionally with :PORT; got {name!r}")
    if is_loopback(host):
        own = ["localhost", "127.0.0.1", "[::1]"]
        bound = f"[{host.strip('[]')}]" if ":" in host else host.lower()
        if bound not in own:  # another loopback address (127.0.0.2): the one the server prints
            own.append(bound)
    elif is_wildcard(host):
        return tuple(names) if names else None
    else:
        own = [f"[{host.strip('[]')}]" if ":" in host else host.lower()]
    hosts = [f"{name}:{port}" for name in own] + (own if port == 80 else [])
    return tuple(hosts + names)


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise UsageError("a token must be 8 to 200 letters, digits or ._~+/- (it travels in headers and cookies)")
    return token


def new_token() -> str:
    return secrets.token_urlsafe(24)


class AccessGuard:
    """Pure ASGI middleware: a wrong ``Host`` gets 400, a missing or wrong token 401 (both JSON)."""

    def __init__(self, app, access: Access):
        self.app = app
        self.hosts = None if access.allowed_hosts is None else frozenset(h.lower() for h in access.allowed_hosts)
        self.token = access.token.encode() if access.token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if self.hosts is not None and not self._host_allowed(host):
            return await _refuse(send, 400, f"this server does not answer to the host {host[:100]!r} (cbir serve --allowed-host adds a name)")
        if self.token is None:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        given = _token_in(headers)
        if path == "/" and given is None:
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if "token" in query and self._valid(query["token"][0].encode()):
                return await _to_page_with_cookie(send, query["token"][0])
        if _OPEN_PATHS.fullmatch(path) or (given is not None and self._valid(given)):
            return await self.app(scope, receive, send)
        what = "a wrong token" if given is not None else "no token"
        return await _refuse(
            send,
            401,
            f"this server needs its token; the request had {what} "
            f"(send 'Authorization: Bearer TOKEN', 'X-CBIR-Token: TOKEN' or the {COOKIE} cookie, or open /?token=TOKEN)",
            [(b"www-authenticate", b'Bearer realm="cbir"')],
        )

    def _host_allowed(self, host: str) -> bool:
        if host in self.hosts:
            return True
        name, colon, port = host.rpartition(":")
        return bool(colon) and port.isdigit() and name in self.hosts  # an entry without a port allows any port

    def _valid(self, given: bytes) -> bool:
        return hmac.compare_digest(given, self.token)


def _headers(scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers") or []}


def _token_in(headers: dict[bytes, bytes]) -> bytes | None:
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    if b"x-cbir-token" in headers:
        return headers[b"x-cbir-token"].strip()
    for part in headers.get(b"cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode():
            return urllib.parse.unquote_to_bytes(value)
    return None


async def _refuse(send, status: int, message: str, extra_headers=()) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _to_page_with_cookie(send, token: str) -> None:
    # HttpOnly: the page never needs to read it; SameSite=Strict: no other site's page can send it.
    cookie = f"{COOKIE}={urllib.parse.quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
    headers = [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0"), (b"referrer-policy", b"no-referrer")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


# -- what paths a response may show ----------------------------------------------------
_ABSOLUTE = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"(),;:<>/]+/)*([^\s'\"(),;:<>/]*)")


def public_path(path: str, roots: Sequence[str]) -> str:
    """``path`` relative to the indexed folder it lies in, under that folder's name (``photos/red/1.jpg``).

    Outside every root (it should not be): its file name only. Escaped as every shown name is
    (:func:`cbir.display.display_path`): JSON cannot carry a name that is not UTF-8.
    """
    for root in sorted(roots, key=len, reverse=True):
        if is_under(path, root):
            name = os.path.basename(root.rstrip(os.sep)) or "."
            rest = path[len(root) :].lstrip(os.sep)
            return display_path(f"{name}/{rest}" if rest else name, controls=False)
    return display_path(os.path.basename(path), controls=False)


def private_path(shown: str, roots: Sequence[str]) -> str:
    """The server path that :func:`public_path` shows as ``shown`` (``photos/red`` -> ``/srv/photos/red``); as given otherwise."""
    for root in sorted(roots, key=len, reverse=True):
        name = os.path.basename(root.rstrip(os.sep)) or "."
        if shown == name or shown.startswith(name + "/"):
            return root.rstrip(os.sep) + shown[len(name) :]
    return shown


def public_text(text: str, roots: Sequence[str] = ()) -> str:
    """``text`` (an error message) with every absolute path shortened: root-relative where known, else its last part."""
    for root in sorted(roots, key=len, reverse=True):
        text = re.sub(re.escape(root.rstrip(os.sep)) + r"(/[^\s'\"(),;:<>]*)?", lambda m: public_path(m.group(0), [root]), text)
    return _ABSOLUTE.sub(lambda m: m.group(1) or ".", text)


def public_description(described: dict, roots: Sequence[str]) -> dict:
    """``Searcher.describe()`` without absolute server paths: no index folder, weights by file name only."""
    shown = {key: value for key, value in described.items() if key != "path"}
    shown["removed_paths"] = [public_path(p, roots) for p in described.get("removed_paths", [])]
    shown["embedder"] = _without_absolute_paths(described.get("embedder"))
    shown["extractor"] = public_text(str(described.get("extractor", "")))
    return shown


def without_weight_paths(described: dict) -> dict:
    """``Searcher.describe()`` with model files named by file name (what every server shows), and a ``summary``.

    A weights file's folder says nothing about the index and everything about the server's disk.
    """
    shown = {**described, "embedder": _without_absolute_paths(described.get("embedder"))}
    shown["extractor"] = public_text(str(described.get("extractor", "")))
    shown["summary"] = extractor_summary(shown["embedder"])
    return shown


def extractor_summary(embedder: dict | None) -> str:
    """The extractor in a few words, for a page's header: ``cnn resnet50 (gem)``, ``color``, ``... + PCA128``."""
    config = (embedder or {}).get("extractor") or {}
    params = config.get("params") or {}
    text = str(config.get("name", "unknown"))
    if isinstance(params.get("backbone"), str):
        text += f" {params['backbone']}"
        if isinstance(params.get("pooling"), str):
            text += f" ({params['pooling']})"
    weights = params.get("weights")
    if isinstance(weights, str) and weights not in ("imagenet", "none"):
        text += f", weights {os.path.basename(weights)}"
    pca = (embedder or {}).get("pca")
    if isinstance(pca, dict) and pca.get("n_components"):
        text += f" + PCA{pca['n_components']}"
    return text


def _without_absolute_paths(value):
    if isinstance(value, dict):
        return {key: _without_absolute_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_absolute_paths(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value)
    return value
