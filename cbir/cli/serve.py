"""``cbir serve``: the search page and HTTP API over the indexes in a folder."""

from __future__ import annotations

import copy
import logging
import re
import socket
from typing import Annotated, Optional

import typer

from cbir.cli._common import IndexDirOption, handle_errors, stderr


@handle_errors
def serve(
    index_dir: IndexDirOption = None,
    names: Annotated[
        Optional[list[str]],
        typer.Option("--name", "-n", help="Serve only this index (repeatable). (default: every index in --index-dir)", show_default=False),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Any other than loopback (e.g. 0.0.0.0) lets other machines in: "
            "a token is then required and the safe limits below apply.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port; 0 picks a free one.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            "--token",
            envvar="CBIR_TOKEN",
            help="Require this token on every request (header 'Authorization: Bearer TOKEN' or 'X-CBIR-Token', "
            "or the page's cookie). (default: none on loopback; a random one, printed, on any other address)",
            show_default=False,
        ),
    ] = None,
    no_token: Annotated[
        bool, typer.Option("--no-token", help="Serve a non-loopback address without a token (e.g. behind a proxy that authenticates).")
    ] = False,
    allowed_hosts: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allowed-host",
            help="Also answer requests for this Host name, optionally NAME:PORT (repeatable; e.g. a reverse proxy's name). "
            "(default: the loopback names on loopback, the address itself on another one, any on 0.0.0.0)",
            show_default=False,
        ),
    ] = None,
    hide_paths: Annotated[
        bool,
        typer.Option("--hide-paths", help="Show no absolute server path even on loopback (e.g. behind a reverse proxy). (default: hidden on any other address)"),
    ] = False,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest accepted upload, in MB.")] = 20.0,
    max_megapixels: Annotated[
        Optional[float],
        typer.Option(
            "--max-megapixels", min=0.001, max=180, help="Largest accepted upload, in decoded megapixels. (default: 50 on loopback, 16 elsewhere)",
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        Optional[int],
        typer.Option("--max-connections", min=1, help="Connections at once; more get 503. (default: 1000 on loopback, 100 elsewhere)", show_default=False),
    ] = None,
    header_timeout: Annotated[
        Optional[float],
        typer.Option("--header-timeout", min=0.1, help="Seconds a request's headers may take; the connection is closed after. (default: 60 on loopback, 10 elsewhere)", show_default=False),
    ] = None,
    body_timeout: Annotated[
        Optional[float],
        typer.Option("--body-timeout", min=0.1, help="Seconds a whole upload may take; 408 after. (default: 600 on loopback, 60 elsewhere)", show_default=False),
    ] = None,
    keep_alive_timeout: Annotated[
        Optional[float],
        typer.Option("--keep-alive-timeout", min=0.1, help="Seconds an idle connection stays open. (default: 30 on loopback, 5 elsewhere)", show_default=False),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request on stderr: client, method, path, status (query strings included).")
    ] = False,
) -> None:
    """Serve a search page and an HTTP API (docs at /docs) for the indexes in --index-dir.

    Open the printed address in a browser: pick an index, drop or paste an
    image, click a result for more like it. Indexes updated by 'cbir index'
    while serving are picked up without a restart; nothing is written to the
    index folder. Stop with Ctrl-C. Serving other machines, and a reverse
    proxy in front: docs/serve.md.
    """

    try:
        import uvicorn
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        from cbir.server.app import Limits, build_command, create_app
    except ImportError as exc:
        from cbir.extras import missing_extra

        raise missing_extra(exc.name or "FastAPI", "serve", "cbir serve") from None
    from cbir.errors import UsageError
    from cbir.server.access import Access, allowed_hosts_for, check_token, is_loopback, new_token
    from cbir.server.live import IndexPool
    from cbir.server.transport import ServeSettings, header_deadline_protocol

    loopback = is_loopback(host)
    if token is not None and no_token:
        raise UsageError("give --token or --no-token, not both")
    token = check_token(token) if token is not None else (new_token() if not loopback and not no_token else None)
    defaults = ServeSettings.default(loopback)
    settings = ServeSettings(
        header_timeout=header_timeout or defaults.header_timeout,
        body_timeout=body_timeout or defaults.body_timeout,
        keep_alive_timeout=keep_alive_timeout or defaults.keep_alive_timeout,
        max_connections=max_connections or defaults.max_connections,
        max_megapixels=max_megapixels or defaults.max_megapixels,
    )
    pool = IndexPool(index_dir, names).open()
    try:
        listener = _listen(host, port)
    except BaseException:
        pool.close()
        raise
    try:
        bound_host, bound_port = listener.getsockname()[:2]
        access = Access(allowed_hosts_for(host, bound_port, allowed_hosts or ()), token=token, show_paths=loopback and not hide_paths)
        limits = Limits(
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_pixels=int(settings.max_megapixels * 1_000_000),
            body_timeout=settings.body_timeout,
        )
        app = create_app(pool=pool, limits=limits, access=access)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        login = f"?token={token}" if token else ""
        served = pool.names_served()
        what = f"{len(served)} index(es) ({', '.join(served)})" if served else "no index yet"
        stderr.print(f"serving {what} on http://{shown}:{bound_port}/{login} (Ctrl-C to stop)", markup=False)
        if not served:
            problems = "".join(f"; not served: {problem}" for problem in pool.problems())
            stderr.print(
                f"note: {pool.index_dir} holds no index{problems}; build one with '{build_command(pool.index_dir)}' "
                "(the running server picks it up)",
                markup=False,
            )
        if not loopback:
            guard = "anyone with the token" if token else "anyone (no token)"
            stderr.print(f"warning: listening on {host}: {guard} who can reach it can search and download the indexed images", markup=False)
        config = uvicorn.Config(
            app,
            log_config=_log_config(uvicorn.config.LOGGING_CONFIG),
            log_level="warning",
            access_log=access_log,
            timeout_graceful_shutdown=5,
            http=header_deadline_protocol(AutoHTTPProtocol, settings.header_timeout),
            timeout_keep_alive=settings.keep_alive_timeout,
            limit_concurrency=settings.max_connections,
        )
        if access_log:  # log_level="warning" above would filter out the access lines, which uvicorn logs at INFO
            access_logger = logging.getLogger("uvicorn.access")
            access_logger.setLevel(logging.INFO)
            access_logger.addFilter(_hide_token)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        pool.close()
        listener.close()


def _log_config(default: dict) -> dict:
    """uvicorn's logging set-up, with the access lines on stderr beside every other line (uvicorn's own go to stdout)."""
    config = copy.deepcopy(default)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def _hide_token(record: logging.LogRecord) -> bool:
    """An access line shows ``/?token=...`` (the address printed at start) as ``token=...``: a log is no place for it."""
    if isinstance(record.args, tuple) and len(record.args) >= 3 and "token=" in str(record.args[2]):
        args = list(record.args)
        args[2] = re.sub(r"token=[^&]*", "token=...", str(args[2]))
        record.args = tuple(args)
    return True


def _listen(host: str, port: int) -> socket.socket:
    """Bind first, so a taken port is one clear error line (and port 0 can be reported)."""
    from cbir.errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener
