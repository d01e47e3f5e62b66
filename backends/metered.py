"""An Engine wrapper that records the sidecar's metrics and its engine span.

Wrapping keeps every engine free of telemetry code; the cost is one more
async-generator step per delta.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from functools import cache

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backends.engine import (
    Embeddings,
    EmbedRequest,
    Engine,
    EngineError,
    EngineEvent,
    EngineRequest,
    Finished,
    LoadReport,
)

_TRACER = trace.get_tracer("llmgw.sidecar")
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SidecarMetrics:
    """Counters and histograms of one sidecar process."""

    def __init__(self) -> None:
        self.requests = Counter(
            "llmgw_sidecar_requests_total",
            "Generate calls by model and outcome.",
            ["model", "outcome"],
        )
        self.ttft = Histogram(
            "llmgw_sidecar_time_to_first_token_seconds",
            "From the Generate call to the engine's first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
        )
        self.tokens = Counter(
            "llmgw_sidecar_generated_tokens_total", "Tokens generated.", ["model"]
        )
        self.stream_hold = Gauge(
            "llmgw_sidecar_stream_hold_seconds",
            "How long streams may hold a message to merge tokens into it (adaptive hold; "
            "0 while this process keeps up).",
        )
        self.loop_lag = Gauge(
            "llmgw_sidecar_event_loop_lag_seconds",
            "Smoothed delay between a stream being woken and running: the event loop's lag "
            "that drives the adaptive hold.",
        )

    def export_pace(self, hold_s: float, lag_s: float) -> None:
        """The adaptive hold's state after a controller step (``LoopLagPace(on_step=...)``)."""
        self.stream_hold.set(hold_s)
        self.loop_lag.set(lag_s)


@cache
def sidecar_metrics() -> SidecarMetrics:
    """The process's sidecar metrics, created once."""
    return SidecarMetrics()


class EngineLoadCollector(Collector):
    """Reads the engine's load report at scrape time (a sidecar is one process)."""

    def __init__(self, engine: Engine, model: str) -> None:
        self._engine = engine
        self._model = model

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Running, waiting and capacity now; prefix-cache counters if the engine keeps them."""
        report: LoadReport = self._engine.load()
        for name, value, doc in (
            ("llmgw_sidecar_engine_running", report.running, "Sequences being generated."),
            ("llmgw_sidecar_engine_waiting", report.waiting, "Sequences queued in the engine."),
            ("llmgw_sidecar_engine_capacity", report.capacity, "Sequences run at once."),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model"])
            family.add_metric([self._model], value)
            yield family
        # Optional capability (the simulator has it): like vLLM's prefix_cache_* counters.
        stats_of = getattr(self._engine, "prefix_cache_stats", None)
        if stats_of is None:
            return
        stats = stats_of()
        for name, value, doc in (
            ("llmgw_sidecar_prefix_cache_queries", stats.queries, "Prompt tokens looked up."),
            ("llmgw_sidecar_prefix_cache_hits", stats.hits, "Prompt tokens found cached."),
        ):
            counter = CounterMetricFamily(name, doc + " (prefix cache)", labels=["model"])
            counter.add_metric([self._model], value)
            yield counter
        blocks = GaugeMetricFamily(
            "llmgw_sidecar_prefix_cache_blocks", "Blocks in the prefix cache.", labels=["model"]
        )
        blocks.add_metric([self._model], stats.blocks)
        yield blocks


class MeteredEngine:
    """Delegates to ``engine``; counts outcomes, tokens and TTFT, and traces each call."""

    def __init__(self, engine: Engine, model: str) -> None:
        self._engine = engine
        self._model = model
        self._metrics = sidecar_metrics()
        REGISTRY.register(EngineLoadCollector(engine, model))

    def load(self) -> LoadReport:
        """The wrapped engine's load."""
        return self._engine.load()

    def ready(self) -> bool:
        """The wrapped engine's readiness."""
        return self._engine.ready()

    async def start(self) -> None:
        """Start the wrapped engine."""
        await self._engine.start()

    async def close(self) -> None:
        """Close the wrapped engine."""
        await self._engine.close()

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Relay the engine's events, recording what happened."""
        m, model = self._metrics, self._model
        began = time.perf_counter()
        outcome = "cancelled"
        first = True
        with _TRACER.start_as_current_span("llmgw.engine/generate", kind=SpanKind.INTERNAL) as span:
            span.set_attribute("gen_ai.request.model", request.model or model)
            if request.max_tokens is not None:
                span.set_attribute("gen_ai.request.max_tokens", request.max_tokens)
            span.set_attribute("llmgw.request_id", request.request_id)
            try:
                # aclosing: a closed stream aborts the engine at once, not when collected.
                async with aclosing(self._engine.generate(request)) as events:
                    async for event in events:
                        if type(event) is not Finished:
                            if first:
                                first = False
                                m.ttft.labels(model).observe(time.perf_counter() - began)
                        elif isinstance(event, Finished):
                            outcome = "ok"
                            m.tokens.labels(model).inc(event.completion_tokens)
                            span.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
                            span.set_attribute(
                                "gen_ai.usage.output_tokens", event.completion_tokens
                            )
                            span.set_attribute(
                                "gen_ai.response.finish_reasons", [event.reason.value]
                            )
                        yield event
            except EngineError as error:
                outcome = error.reason
                raise
            finally:
                m.requests.labels(model, outcome).inc()

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Embed through the wrapped engine, recording the outcome and the span."""
        outcome = "cancelled"
        with _TRACER.start_as_current_span("llmgw.engine/embed", kind=SpanKind.INTERNAL) as span:
            span.set_attribute("gen_ai.request.model", request.model or self._model)
            span.set_attribute("llmgw.request_id", request.request_id)
            try:
                result = await self._engine.embed(request)
                outcome = "ok"
                span.set_attribute("gen_ai.usage.input_tokens", result.prompt_tokens)
                return result
            except EngineError as error:
                outcome = error.reason
                raise
            finally:
                self._metrics.requests.labels(self._model, outcome).inc()
