"""The gateway's Prometheus metrics (prometheus-client).

Label values are bounded: models and tenants come from configuration,
endpoints from the routing file, outcomes from our own error reasons;
nothing a client types becomes a label.

The core latency and token metrics are also exported under the OpenTelemetry
GenAI semantic-convention names, in Prometheus form (``gen_ai.server.time_to_first_token``
is ``gen_ai_server_time_to_first_token_seconds``, with ``gen_ai_request_model`` and
``gen_ai_operation_name`` labels and the conventions' advised buckets), so
dashboards built for those names work unchanged. Definitions are created on first
use, after ``common.observability.metrics.prepare_multiprocess`` may have set up
multiprocess mode for ``--workers``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import cache

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from gateway.domain.observer import CompletionObserver, RequestRecord
from gateway.limits.limiter import Limiter
from gateway.routing.breaker import BreakerState
from gateway.routing.registry import ModelRegistry

# LLM latencies: TTFT from a few ms (cached prefix, idle GPU) to a minute
# (queueing); ITL from sub-ms (batched deltas) to a second (overload).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
# Time per output token: a few ms (small model, idle GPU) to a second (overload, CPU).
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)

# Buckets the OpenTelemetry GenAI semantic conventions advise for these metrics.
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                      2.5, 5.0, 7.5, 10.0)  # fmt: skip
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                          20.48, 40.96, 81.92)  # fmt: skip
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                       16777216, 67108864)  # fmt: skip
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_request_model")
GENAI_OPERATION = "chat"

BREAKER_STATES = {
    BreakerState.CLOSED: "closed",
    BreakerState.HALF_OPEN: "half_open",
    BreakerState.OPEN: "open",
}


@dataclass(frozen=True)
class GatewayMetrics:
    """Every metric the gateway exports."""

    requests: Counter
    ttft: Histogram
    itl: Histogram
    tpot: Histogram
    duration: Histogram
    overhead: Histogram
    output_rate: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    inflight: Gauge
    queue_depth: Gauge
    pool_panic: Gauge
    backend_running: Gauge
    backend_waiting: Gauge
    backend_capacity: Gauge
    backend_healthy: Gauge
    breaker_state: Gauge
    retries: Counter
    fallbacks: Counter
    rejections: Counter
    limits_store_up: Gauge
    limits_pending_writes: Gauge
    limits_fallback_admissions: Counter
    genai_ttft: Histogram
    genai_tpot: Histogram
    genai_duration: Histogram
    genai_tokens: Histogram
    usage_dropped: Counter
    stream_hold: Gauge
    loop_lag: Gauge


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
        tpot=Histogram(
            "llmgw_gateway_time_per_output_token_seconds",
            "Per request: time after the first token over the tokens after it "
            "((duration - TTFT) / (completion tokens - 1)); requests with two tokens or more.",
            ["model"],
            buckets=TPOT_BUCKETS,
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
        pool_panic=Gauge(
            "llmgw_gateway_pool_panic",
            "1 while too few of the model's endpoints pass health checks and routing "
            "ignores health (panic threshold).",
            ["model"],
            multiprocess_mode="max",
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
            "Circuit breaker state: 1 for the endpoint's current state "
            "(closed, half_open or open), 0 for the others.",
            ["model", "endpoint", "state"],
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
        stream_hold=Gauge(
            "llmgw_gateway_stream_hold_seconds",
            "How long streams may hold a message to merge tokens into it (adaptive hold; "
            "0 while this process keeps up).",
            multiprocess_mode="max",
        ),
        loop_lag=Gauge(
            "llmgw_gateway_event_loop_lag_seconds",
            "Smoothed delay between a stream being woken and running: the event loop's lag "
            "that drives the adaptive hold.",
            multiprocess_mode="max",
        ),
        limits_store_up=Gauge(
            "llmgw_gateway_limits_store_up",
            "1 while the shared rate-limit store (Redis) answers; 0 while this process "
            "admits against its in-memory fallback (fail-open) or refuses (fail-closed).",
            multiprocess_mode="min",
        ),
        limits_pending_writes=Gauge(
            "llmgw_gateway_limits_pending_writes",
            "Rate-limit store writes queued for when the store answers again.",
            multiprocess_mode="livesum",
        ),
        limits_fallback_admissions=Counter(
            "llmgw_gateway_limits_fallback_admissions_total",
            "Requests admitted against this process's in-memory limits because the shared "
            "store (Redis) did not answer (fail-open).",
        ),
        genai_ttft=Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "OpenTelemetry GenAI gen_ai.server.time_to_first_token: time to the first token.",
            GENAI_LABELS,
            buckets=GENAI_TTFT_BUCKETS,
        ),
        genai_tpot=Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "OpenTelemetry GenAI gen_ai.server.time_per_output_token: time per output token "
            "after the first.",
            GENAI_LABELS,
            buckets=GENAI_TPOT_BUCKETS,
        ),
        genai_duration=Histogram(
            "gen_ai_server_request_duration_seconds",
            "OpenTelemetry GenAI gen_ai.server.request.duration: request duration.",
            GENAI_LABELS,
            buckets=GENAI_DURATION_BUCKETS,
        ),
        genai_tokens=Histogram(
            "gen_ai_client_token_usage",
            "OpenTelemetry GenAI gen_ai.client.token.usage: tokens per request, by "
            "gen_ai_token_type (input or output).",
            (*GENAI_LABELS, "gen_ai_token_type"),
            buckets=GENAI_TOKEN_BUCKETS,
        ),
        usage_dropped=Counter(
            "llmgw_gateway_usage_events_dropped_total",
            "Usage events lost (buffer full, store down at shutdown without a spool, "
            "unreadable spool lines), by reason.",
            ["reason"],
        ),
    )


def count_rate_limit_refusal(tenant: str, limit: str) -> None:
    """Count a request a tenant's limit refused (admission's refusal hook)."""
    gateway_metrics().rejections.labels(tenant, limit).inc()


def count_usage_dropped(reason: str, count: int) -> None:
    """Count usage events the meter lost (its drop hook)."""
    gateway_metrics().usage_dropped.labels(reason).inc(count)


def export_pace(hold_s: float, lag_s: float) -> None:
    """The adaptive hold's state after a controller step (``LoopLagPace(on_step=...)``)."""
    m = gateway_metrics()
    m.stream_hold.set(hold_s)
    m.loop_lag.set(lag_s)


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
        self.m.genai_ttft.labels(GENAI_OPERATION, model).observe(ttft_s)
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
        m.genai_duration.labels(GENAI_OPERATION, model).observe(record.duration_s)
        if record.prompt_tokens:
            m.prompt_tokens.labels(model, tenant).inc(record.prompt_tokens)
            m.genai_tokens.labels(GENAI_OPERATION, model, "input").observe(record.prompt_tokens)
        if record.completion_tokens:
            m.completion_tokens.labels(model, tenant).inc(record.completion_tokens)
            m.genai_tokens.labels(GENAI_OPERATION, model, "output").observe(
                record.completion_tokens
            )
            if record.ttft_s is not None and record.duration_s > record.ttft_s:
                decoding_s = record.duration_s - record.ttft_s
                m.output_rate.labels(model).observe(record.completion_tokens / decoding_s)
                if record.completion_tokens > 1:
                    tpot = decoding_s / (record.completion_tokens - 1)
                    m.tpot.labels(model).observe(tpot)
                    m.genai_tpot.labels(GENAI_OPERATION, model).observe(tpot)


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
    (called by the health monitor after each round, off the request path).
    Series of endpoints that left (discovery, a routing-file reload) are removed."""
    m = metrics or gateway_metrics()
    exported: set[tuple[str, str]] = set()
    for route in registry.routes:
        m.queue_depth.labels(route.name).set(route.pool.queue.depth)
        m.pool_panic.labels(route.name).set(1 if route.pool.panicking() else 0)
        for e in route.pool.endpoints:
            labels = (route.name, e.address)
            exported.add(labels)
            m.backend_running.labels(*labels).set(e.load.running)
            m.backend_waiting.labels(*labels).set(e.load.waiting)
            m.backend_capacity.labels(*labels).set(e.load.capacity)
            m.backend_healthy.labels(*labels).set(1 if e.healthy else 0)
            current = BREAKER_STATES[e.breaker.state]
            for state in BREAKER_STATES.values():
                m.breaker_state.labels(*labels, state).set(1 if state == current else 0)

    key = (id(m), id(registry))
    gone = _EXPORTED.get(key, set()) - exported
    for labels in gone:
        for gauge in (
            m.backend_running,
            m.backend_waiting,
            m.backend_capacity,
            m.backend_healthy,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        for state in BREAKER_STATES.values():
            with contextlib.suppress(KeyError):
                m.breaker_state.remove(*labels, state)
    _EXPORTED[key] = exported


# Per (metrics, registry): the (model, endpoint) series exported last round.
_EXPORTED: dict[tuple[int, int], set[tuple[str, str]]] = {}


class LimitsStateExporter:
    """Copies the limiter's state into gauges and a counter (called with the routing
    state, off the request path): whether the shared store answers, the writes queued
    for it, and the requests admitted against the in-memory fallback meanwhile."""

    def __init__(self, limiter: Limiter, metrics: GatewayMetrics | None = None) -> None:
        self._limiter = limiter
        self._m = metrics or gateway_metrics()
        self._counted = limiter.local_admissions

    def __call__(self) -> None:
        """Export now."""
        limiter, m = self._limiter, self._m
        m.limits_store_up.set(0 if limiter.store_down else 1)
        m.limits_pending_writes.set(limiter.pending)
        admitted = limiter.local_admissions
        if admitted > self._counted:
            m.limits_fallback_admissions.inc(admitted - self._counted)
        self._counted = admitted
