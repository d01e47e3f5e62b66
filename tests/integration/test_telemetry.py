"""The gateway's metrics beyond counting: a true time-per-output-token histogram beside
the inter-delta one, the OpenTelemetry GenAI names for the core latency and token
metrics, the breaker state as a labelled series, and the rate-limit store's state."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from gateway.config import GatewayConfig
from gateway.domain.observer import RequestRecord
from gateway.limits.limiter import Limiter
from gateway.limits.ports import TenantLimits
from gateway.routing.breaker import BreakerState
from gateway.routing.build import build_registry
from gateway.telemetry import (
    GENAI_OPERATION,
    LimitsStateExporter,
    PrometheusObserver,
    export_routing_state,
)
from tests.redis_server import RedisServer

_models = itertools.count()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def record(model: str, ttft_s: float, duration_s: float, completion: int) -> RequestRecord:
    return RequestRecord(
        request_id="r",
        model=model,
        served_by=model,
        backend="b",
        tenant="t",
        outcome="ok",
        ttft_s=ttft_s,
        prompt_tokens=7,
        completion_tokens=completion,
        duration_s=duration_s,
    )


def test_time_per_output_token_is_decode_time_over_the_tokens_after_the_first() -> None:
    model = f"tpot-{next(_models)}"
    observer = PrometheusObserver()
    observer.started(model)
    observer.first_token(model, 0.5, 0.01)
    # Two deltas of several tokens each: the inter-delta histogram sees 2 gaps of 1 s...
    observer.delta(model, 1.0, 5)
    observer.delta(model, 1.0, 5)
    # ...while 11 tokens took 2 s after the first: 0.2 s per output token.
    observer.finished(record(model, ttft_s=0.5, duration_s=2.5, completion=11))
    tpot = "llmgw_gateway_time_per_output_token_seconds"
    assert value(f"{tpot}_count", model=model) == 1
    assert value(f"{tpot}_sum", model=model) == pytest.approx(0.2)
    assert value("llmgw_gateway_inter_token_latency_seconds_sum", model=model) == 2.0
    genai = {"gen_ai_operation_name": GENAI_OPERATION, "gen_ai_request_model": model}
    assert value("gen_ai_server_time_per_output_token_seconds_sum", **genai) == pytest.approx(0.2)
    assert value("gen_ai_server_time_to_first_token_seconds_sum", **genai) == 0.5
    assert value("gen_ai_server_request_duration_seconds_sum", **genai) == 2.5
    assert value("gen_ai_client_token_usage_sum", **genai, gen_ai_token_type="output") == 11
    assert value("gen_ai_client_token_usage_sum", **genai, gen_ai_token_type="input") == 7


def test_a_one_token_answer_has_no_time_per_output_token() -> None:
    model = f"tpot-{next(_models)}"
    observer = PrometheusObserver()
    observer.started(model)
    observer.finished(record(model, ttft_s=0.5, duration_s=0.6, completion=1))
    assert value("llmgw_gateway_time_per_output_token_seconds_count", model=model) == 0
    assert value("llmgw_gateway_request_duration_seconds_count", model=model) == 1


async def test_breaker_state_is_one_series_per_state() -> None:
    sidecar = await start_sidecar(SimEngine(SimConfig()))
    try:
        model = f"breaker-{next(_models)}"
        endpoint = f"127.0.0.1:{sidecar.port}"
        registry = build_registry(
            GatewayConfig.model_validate({"models": [{"name": model, "endpoints": [endpoint]}]})
        )
        breaker = registry.routes[0].pool.endpoints[0].breaker

        def states() -> dict[str, float]:
            return {
                s: value(
                    "llmgw_backend_circuit_breaker_state", model=model, endpoint=endpoint, state=s
                )
                for s in ("closed", "half_open", "open")
            }

        export_routing_state(registry)
        assert breaker.state is BreakerState.CLOSED
        assert states() == {"closed": 1, "half_open": 0, "open": 0}
        while breaker.state is not BreakerState.OPEN:
            breaker.record_failure()
        export_routing_state(registry)
        assert states() == {"closed": 0, "half_open": 0, "open": 1}
    finally:
        await sidecar.stop(0)


async def test_fallback_admissions_and_store_state_are_exported(tmp_path: Path) -> None:
    from gateway.adapters.redis_conn import connect
    from gateway.adapters.redis_limits import RedisLimitStore

    redis = RedisServer(tmp_path).start()
    client = connect(redis.url, timeout_s=0.25)
    limiter = Limiter(RedisLimitStore(client, 0.25))
    try:
        export = LimitsStateExporter(limiter)
        limits = TenantLimits(requests_per_minute=100, tokens_per_minute=10_000, max_concurrent=10)
        before = value("llmgw_gateway_limits_fallback_admissions_total")
        assert not (await limiter.acquire("acme", limits, "r1", 10)).local
        export()
        assert value("llmgw_gateway_limits_store_up") == 1
        assert value("llmgw_gateway_limits_fallback_admissions_total") == before
        redis.kill()
        assert (await limiter.acquire("acme", limits, "r2", 10)).local
        assert (await limiter.acquire("acme", limits, "r3", 10)).local
        export()
        assert value("llmgw_gateway_limits_store_up") == 0
        assert value("llmgw_gateway_limits_fallback_admissions_total") == before + 2
        export()  # counted once, not again
        assert value("llmgw_gateway_limits_fallback_admissions_total") == before + 2
    finally:
        redis.kill()
        await client.aclose()
