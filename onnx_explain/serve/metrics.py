"""Observability: Prometheus metrics and one access-log line per request.

``/metrics`` (Prometheus text format, prometheus-client) has

* ``onnx_explain_requests_total{route,method,status}``: requests answered, by route
  template (``/v2/models/{name}/infer``, never the raw path: bounded label values);
* ``onnx_explain_request_duration_seconds{route}``: latency histogram;
* ``onnx_explain_batch_size``: images per model call; ``onnx_explain_batch_duration_seconds``;
* ``onnx_explain_queue_depth``: images waiting for a worker; ``onnx_explain_inflight_requests``.

Each app has a registry of its own, so several servers in one process (the tests) never
share counters.  The access log (logger ``onnx_explain.serve.access``) writes
``client "METHOD /path HTTP/1.1" status bytes ms``; the path is percent-escaped, so a
request cannot forge log lines, and the query string is left out.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

access_log = logging.getLogger("onnx_explain.serve.access")

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Status recorded for a request whose client disconnected before the answer (nginx's 499).
CLIENT_CLOSED = 499

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "ObservabilityMiddleware"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "onnx_explain_requests", "Requests answered, by route template, method and HTTP status.",
            ("route", "method", "status"), registry=self.registry,
        )
        self.latency = Histogram(
            "onnx_explain_request_duration_seconds", "Time from request to the end of the answer.",
            ("route",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "onnx_explain_batch_size", "Images per model call (concurrent requests gathered).",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_duration = Histogram(
            "onnx_explain_batch_duration_seconds", "Time of one batch on a worker.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "onnx_explain_queue_depth", "Images waiting for a worker.", registry=self.registry,
        )
        self.inflight = Gauge(
            "onnx_explain_inflight_requests", "Requests being answered now.", registry=self.registry,
        )
        self.rejected = Counter(
            "onnx_explain_rejected", "Requests refused before any work, by reason.",
            ("reason",), registry=self.registry,
        )

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_duration.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _route_of(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _printable_path(path: str) -> str:
    return urllib.parse.quote(path, safe="/:@-._~!$&'()*+,;=%")[:512]


class ObservabilityMiddleware:
    """Counts, times and logs every HTTP request; adds ``X-Content-Type-Options: nosniff``
    so that no browser ever renders an answer as HTML."""

    def __init__(self, app: Callable, metrics: Metrics, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 500, "bytes": 0, "complete": False}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["complete"] = True
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            seconds = time.perf_counter() - start
            status = CLIENT_CLOSED if scope.get("onnx_explain.disconnected") else state["status"]
            route = _route_of(scope)
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if self.log_requests and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info(
                    '%s:%s "%s %s HTTP/%s" %d %d %.1fms', client[0], client[1], scope.get("method", ""),
                    _printable_path(scope.get("path", "")), scope.get("http_version", "1.1"), status,
                    state["bytes"], seconds * 1000.0,
                )
