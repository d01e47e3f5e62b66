"""The shim's Prometheus metrics, recorded by a pure ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware) so streaming and disconnect handling are
untouched; per chunk it costs one extra call. Route labels come from a
fixed list, never from the raw path.
"""

from __future__ import annotations

import time
from functools import cache

from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/usage",
        "/healthz",
        "/readyz",
    }
)
# Paths with a variable part, labelled by their template.
MODEL_ROUTE = "/v1/models/{model}"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ShimMetrics:
    """Every metric the shim exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "llmgw_shim_requests_total", "HTTP requests by route and status.", ["route", "status"]
        )
        self.duration = Histogram(
            "llmgw_shim_request_duration_seconds",
            "From request to the last byte of the response.",
            ["route"],
            buckets=DURATION_BUCKETS,
        )
        self.first_byte = Histogram(
            "llmgw_shim_time_to_first_byte_seconds",
            "From request to the first body byte (for streams: the role chunk).",
            ["route"],
            buckets=DURATION_BUCKETS,
        )
        self.inflight = Gauge(
            "llmgw_shim_inflight_requests", "Requests being served.", multiprocess_mode="livesum"
        )


@cache
def shim_metrics() -> ShimMetrics:
    """The process's shim metrics, created once."""
    return ShimMetrics()


class MetricsMiddleware:
    """Counts and times every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = shim_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and record its status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        path = scope["path"]
        if path in ROUTES:
            route = path
        else:
            route = MODEL_ROUTE if path.startswith("/v1/models/") else "other"
        began = time.perf_counter()
        status = 0
        first_byte = False

        async def recording_send(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif not first_byte and message.get("body"):
                first_byte = True
                m.first_byte.labels(route).observe(time.perf_counter() - began)
            await send(message)

        m.inflight.inc()
        try:
            await self.app(scope, receive, recording_send)
        except ClientDisconnect:
            # The client left while sending its body: nobody to answer, nothing to log
            # (counted as 499 below).
            pass
        except Exception:
            # Starlette's outermost error middleware answers 500 after we see the
            # exception go by: count it as the 500 the client gets, not as a 499.
            status = status or 500
            raise
        finally:
            m.inflight.dec()
            # 499: the client went away before a status was sent (nginx's convention).
            m.requests.labels(route, str(status or 499)).inc()
            m.duration.labels(route).observe(time.perf_counter() - began)
