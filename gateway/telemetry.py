"""The gateway's Prometheus metrics (prometheus-client).

Label values are bounded: models and tenants come from configuration,
endpoints from the routing file, outcomes from our own error reasons;
nothing a client types becomes a label. Definitions are created on first
use, after ``common.observability.metrics.prepare_multiprocess`` may have set up
multiprocess mode for ``--workers``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from gateway.domain.observer import CompletionObserver, RequestRecord
from gateway.routing.breaker import BreakerState
from gateway.routing.registry import ModelRegistry

# LLM latencies: TTFT from a few ms (cached prefix, idle GPU) to a minute
# (queueing); ITL from sub-ms (batched deltas) to a second (overload).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class GatewayMetrics:
    """Every metric the gateway exports."""

    requests: Counter
    ttft: Histogram
    itl: Histogram
    duration: Histogram
    overhead: Histogram
    output_rate: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    inflight: Gauge
    queue_depth: Gauge
    backend_running: Gauge
    backend_waiting: Gauge
    backend_capacity: Gauge
    backend_healthy: Gauge
    breaker_state: Gauge
    retries: Counter
    fallbacks: Counter
    rejections: Counter


@cache
def gateway_metrics() -> GatewayMetrics:
    """The process's metrics, created once."""
    return GatewayMetrics(
        requests=Counter(
            "llmgw_gateway_requests_total",
            "Chat completion requests by model, tenant and outcome.",
            ["model", "tenant", "outcome"],
        ),
        ttft=Histogram(
            "llmgw_gateway_time_to_first_token_seconds",
            "From admission to the first token, as the gateway saw it.",
            ["model"],
            buckets=TTFT_BUCKETS,
        ),
        itl=Histogram(
            "llmgw_gateway_inter_token_latency_seconds",
            "Gap between two deltas of a stream (a delta may hold several tokens).",
            ["model"],
            buckets=ITL_BUCKETS,
        ),
        duration=Histogram(
            "llmgw_gateway_request_duration_seconds",
            "End-to-end request latency in the gateway.",
            ["model"],
            buckets=DURATION_BUCKETS,
        ),
        overhead=Histogram(
            "llmgw_gateway_overhead_seconds",
            "Time to first token spent outside the backend: admission, routing, queueing, retries.",
            ["model"],
            buckets=OVERHEAD_BUCKETS,
        ),
        output_rate=Histogram(
            "llmgw_gateway_output_tokens_per_second",
            "Per-request decode speed: completion tokens over the time after the first token.",
            ["model"],
            buckets=RATE_BUCKETS,
        ),
        prompt_tokens=Counter(
            "llmgw_gateway_prompt_tokens_total", "Prompt tokens.", ["model", "tenant"]
        ),
        completion_tokens=Counter(
            "llmgw_gateway_completion_tokens_total", "Completion tokens.", ["model", "tenant"]
        ),
        inflight=Gauge(
            "llmgw_gateway_inflight_requests",
            "Requests being served.",
            ["model"],
            multiprocess_mode="livesum",
        ),
        queue_depth=Gauge(
            "llmgw_gateway_queue_depth",
            "Requests waiting for a free endpoint.",
            ["model"],
            multiprocess_mode="livesum",
        ),
        backend_running=Gauge(
            "llmgw_backend_running",
            "Sequences the engine runs (its last load report).",
            ["model", "endpoint"],
            multiprocess_mode="max",
        ),
        backend_waiting=Gauge(
            "llmgw_backend_waiting",
            "Sequences queued in the engine (its last load report).",
            ["model", "endpoint"],
            multiprocess_mode="max",
        ),
        backend_capacity=Gauge(
            "llmgw_backend_capacity",
            "Sequences the engine runs at once.",
            ["model", "endpoint"],
            multiprocess_mode="max",
        ),
        backend_healthy=Gauge(
            "llmgw_backend_healthy",
            "1 while the endpoint passes active health checks.",
            ["model", "endpoint"],
            multiprocess_mode="min",
        ),
        breaker_state=Gauge(
            "llmgw_backend_circuit_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["model", "endpoint"],
            multiprocess_mode="max",
        ),
        retries=Counter(
            "llmgw_gateway_retries_total", "Attempts retried before the first token.", ["model"]
        ),
        fallbacks=Counter(
            "llmgw_gateway_fallbacks_total",
            "Requests handed to a fallback model.",
            ["model", "fallback"],
        ),
        rejections=Counter(
            "llmgw_gateway_rate_limit_rejections_total",
            "Requests refused by tenant limits, by reason.",
            ["tenant", "reason"],
        ),
    )


def count_rate_limit_refusal(tenant: str, limit: str) -> None:
    """Count a request a tenant's limit refused (admission's refusal hook)."""
    gateway_metrics().rejections.labels(tenant, limit).inc()


class PrometheusObserver:
    """CompletionObserver that records into gateway_metrics()."""

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.m = metrics or gateway_metrics()
        self._itl: dict[str, Histogram] = {}

    def started(self, model: str) -> None:
        """Count the request in flight."""
        self.m.inflight.labels(model).inc()

    def retried(self, model: str) -> None:
        """Count a retry."""
        self.m.retries.labels(model).inc()

    def fell_back(self, from_model: str, to_model: str) -> None:
        """Count a fallback."""
        self.m.fallbacks.labels(from_model, to_model).inc()

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        """Record TTFT and the gateway's share of it."""
        self.m.ttft.labels(model).observe(ttft_s)
        self.m.overhead.labels(model).observe(overhead_s)

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        """Record the gap since the previous delta (on the streaming path: the
        labelled child is looked up once per model, not per delta)."""
        child = self._itl.get(model)
        if child is None:
            child = self._itl[model] = self.m.itl.labels(model)
        child.observe(gap_s)

    def finished(self, record: RequestRecord) -> None:
        """Count the request by outcome, its tokens and its duration."""
        m = self.m
        model = record.model
        tenant = record.tenant or "anonymous"
        m.inflight.labels(model).dec()
        m.requests.labels(model, tenant, record.outcome).inc()
        m.duration.labels(model).observe(record.duration_s)
        if record.prompt_tokens:
            m.prompt_tokens.labels(model, tenant).inc(record.prompt_tokens)
        if record.completion_tokens:
            m.completion_tokens.labels(model, tenant).inc(record.completion_tokens)
            if record.ttft_s is not None and record.duration_s > record.ttft_s:
                rate = record.completion_tokens / (record.duration_s - record.ttft_s)
                m.output_rate.labels(model).observe(rate)


class AccessLog:
    """One structured log line per request: ids, who, what, how it went.
    Never the prompt, never the key."""

    def __init__(self) -> None:
        self._log = logging.getLogger("llmgw.access")

    def started(self, model: str) -> None:
        """Nothing to log yet."""

    def retried(self, model: str) -> None:
        """Logged with the request."""

    def fell_back(self, from_model: str, to_model: str) -> None:
        """Logged with the request (served_by)."""

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        """Logged with the request."""

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        """Not logged: per-token work stays O(1) and silent."""

    def finished(self, record: RequestRecord) -> None:
        """Write the access line."""
        span = trace.get_current_span().get_span_context()
        self._log.info(
            "request",
            extra={
                "request_id": record.request_id,
                "x_request_id": record.client_request_id or None,
                "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
                "tenant": record.tenant or "anonymous",
                "model": record.model,
                "served_by": record.served_by or None,
                "backend": record.backend or None,
                "outcome": record.outcome,
                "ttft_ms": round(record.ttft_s * 1000, 2) if record.ttft_s is not None else None,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "duration_ms": round(record.duration_s * 1000, 2),
            },
        )


class Observers:
    """Fans each event out to several observers."""

    def __init__(self, *observers: CompletionObserver) -> None:
        self._all = observers

    def started(self, model: str) -> None:
        """Fan out."""
        for o in self._all:
            o.started(model)

    def retried(self, model: str) -> None:
        """Fan out."""
        for o in self._all:
            o.retried(model)

    def fell_back(self, from_model: str, to_model: str) -> None:
        """Fan out."""
        for o in self._all:
            o.fell_back(from_model, to_model)

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        """Fan out."""
        for o in self._all:
            o.first_token(model, ttft_s, overhead_s)

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        """Fan out."""
        for o in self._all:
            o.delta(model, gap_s, tokens)

    def finished(self, record: RequestRecord) -> None:
        """Fan out."""
        for o in self._all:
            o.finished(record)


def export_routing_state(registry: ModelRegistry, metrics: GatewayMetrics | None = None) -> None:
    """Copy queue depth, health, breaker state and load reports into gauges
    (called by the health monitor after each round, off the request path)."""
    m = metrics or gateway_metrics()
    for route in registry.routes:
        m.queue_depth.labels(route.name).set(route.pool.queue.depth)
        for e in route.pool.endpoints:
            labels = (route.name, e.address)
            m.backend_running.labels(*labels).set(e.load.running)
            m.backend_waiting.labels(*labels).set(e.load.waiting)
            m.backend_capacity.labels(*labels).set(e.load.capacity)
            m.backend_healthy.labels(*labels).set(1 if e.healthy else 0)
            m.breaker_state.labels(*labels).set(BREAKER_VALUES[e.breaker.state])
