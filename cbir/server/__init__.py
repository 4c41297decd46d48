"""``cbir serve``: search indexes from a browser and over HTTP (needs the ``cbir[serve]`` extra).

``create_app`` builds the ASGI app; run it with any ASGI server::

    import uvicorn
    from cbir.server import create_app
    uvicorn.run(create_app("indexes"), host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Limits", "Access"]


def __getattr__(name: str) -> Any:
    # FastAPI is imported on first use, so a missing extra is reported by whoever asks for it.
    if name in __all__:
        from cbir.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'cbir.server' has no attribute {name!r}")
