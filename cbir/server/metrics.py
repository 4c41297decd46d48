"""``GET /metrics``: what the server did, in Prometheus' text format (prometheus-client, in the serve extra).

* ``cbir_http_requests_total{method, route, status}``: every request answered;
  ``route`` is the route's template (``/api/indexes/{name}/search``), so an
  index name or image id never becomes a label of its own.
* ``cbir_http_request_errors_total{route, status}``: those answered 4xx or 5xx.
* ``cbir_http_request_duration_seconds{route}``: from the request's first byte
  handed to the app to its last byte sent.
* ``cbir_searches_total{index, kind}`` and
  ``cbir_search_stage_duration_seconds{index, stage}``: each search, and how
  long its stages took (:data:`cbir.timing.STAGES`: decode, embed, search,
  catalogue). A search batched with others reports the batch's embed, search
  and catalogue times: that is how long it waited for them.

Each app has a registry of its own (two apps in one process, as in tests,
never share counters), and the middleware costs a few microseconds a request.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from cbir.timing import STAGES

#: Seconds: from a cache hit (sub-millisecond) to a slow network on a big upload.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServerMetrics:
    """The counters and histograms of one app, and their text for ``/metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cbir_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "cbir_http_request_errors", "HTTP requests answered with a 4xx or 5xx status", ["route", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "cbir_http_request_duration_seconds", "Time to answer a request", ["route"], buckets=_REQUEST_BUCKETS, registry=self.registry
        )
        self.searches = Counter("cbir_searches", "Searches run", ["index", "kind"], registry=self.registry)
        self.stages = Histogram(
            "cbir_search_stage_duration_seconds",
            f"Time a search spent per stage ({', '.join(STAGES)})",
            ["index", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )

    def observe_search(self, index: str, kind: str, stages: dict[str, float]) -> None:
        """One search of ``index`` (``kind``: upload, id, examples) and the seconds of each stage it ran."""
        self.searches.labels(index, kind).inc()
        for name, seconds in stages.items():
            self.stages.labels(index, name).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware counting every HTTP request by route template and status, and timing it."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an app that raises before answering: the server answers 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics = self.metrics
            metrics.requests.labels(scope["method"], route, str(status)).inc()
            if status >= 400:
                metrics.errors.labels(route, str(status)).inc()
            metrics.duration.labels(route).observe(time.perf_counter() - started)
