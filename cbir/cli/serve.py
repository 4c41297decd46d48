"""``cbir serve``: the search page and HTTP API over the indexes in a folder."""

from __future__ import annotations

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
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 lets other machines in (and see your images).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port; 0 picks a free one.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest accepted upload, in MB.")] = 20.0,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", min=0.001, max=180, help="Largest accepted upload, in decoded megapixels.")
    ] = 50.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request on stderr.")] = False,
) -> None:
    """Serve a search page and an HTTP API (docs at /docs) for the indexes in --index-dir.

    Open the printed address in a browser: pick an index, drop or paste an
    image, click a result for more like it. Indexes updated by 'cbir index'
    while serving are picked up without a restart; nothing is written to the
    index folder. Stop with Ctrl-C.
    """

    try:
        import uvicorn

        from cbir.server.app import Limits, create_app
    except ImportError as exc:
        from cbir.extras import missing_extra

        raise missing_extra(exc.name or "FastAPI", "serve", "cbir serve") from None
    from cbir.server.live import IndexPool

    pool = IndexPool(index_dir, names).open()
    try:
        listener = _listen(host, port)
    except BaseException:
        pool.close()
        raise
    try:
        limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=int(max_megapixels * 1_000_000))
        app = create_app(pool=pool, limits=limits)
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        stderr.print(
            f"serving {len(pool.names_served())} index(es) ({', '.join(pool.names_served())}) "
            f"on http://{shown}:{bound_port}/ (Ctrl-C to stop)",
            markup=False,
        )
        if host not in ("127.0.0.1", "localhost", "::1"):
            stderr.print(f"warning: listening on {host}: anyone who can reach it can search and download the indexed images", markup=False)
        config = uvicorn.Config(app, log_level="warning", access_log=access_log, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        pool.close()
        listener.close()


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
