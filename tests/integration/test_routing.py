"""Routing and resilience against real gRPC sidecars in this process:
retries before the first token, none after, timeouts, fallback, queueing,
breakers and active health."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import grpc
import httpx
import openai
import pytest

from backends.engines.sim import FailureMode, SimConfig, SimEngine
from backends.server import RunningSidecar, start_sidecar
from gateway.config import GatewayConfig
from gateway.server import RunningGateway, start_gateway
from llmgw.admin.v1 import admin_pb2, admin_pb2_grpc
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import ANY_KEY, params, start_shim, wait_until

# Fast, but not so twitchy that a busy CI machine ejects a healthy endpoint.
FAST_HEALTH = {
    "interval_s": 0.05,
    "timeout_s": 1.0,
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
}


@dataclass
class Cluster:
    engines: dict[str, list[SimEngine]]
    sidecars: list[RunningSidecar]
    gateway: RunningGateway
    channel: grpc.aio.Channel

    @property
    def chat(self) -> pb_grpc.ChatServiceStub:
        return pb_grpc.ChatServiceStub(self.channel)

    async def admin(self) -> dict[str, admin_pb2.ModelStatus]:
        listed = await admin_pb2_grpc.AdminServiceStub(self.channel).ListModels(
            admin_pb2.ListModelsRequest()
        )
        return {m.model: m for m in listed.models}

    def address(self, model: str, i: int) -> str:
        return self.gateway.service.registry.resolve(model).pool.endpoints[i].address


async def cluster(
    pools: dict[str, Sequence[SimConfig | str]],
    fallbacks: dict[str, list[str]] | None = None,
    resilience: dict[str, object] | None = None,
    max_inflight: int = 256,
    options: dict[str, dict[str, object]] | None = None,
) -> Cluster:
    """Models with one sidecar per SimConfig (a str is a raw address: nothing listening)."""
    engines: dict[str, list[SimEngine]] = {}
    sidecars: list[RunningSidecar] = []
    models = []
    for name, replicas in pools.items():
        addresses = []
        for replica in replicas:
            if isinstance(replica, str):
                addresses.append(replica)
                continue
            engine = SimEngine(replica)
            sidecar = await start_sidecar(engine)
            engines.setdefault(name, []).append(engine)
            sidecars.append(sidecar)
            addresses.append(f"127.0.0.1:{sidecar.port}")
        models.append(
            {
                "name": name,
                "endpoints": addresses,
                "fallbacks": (fallbacks or {}).get(name, []),
                "max_inflight_per_endpoint": max_inflight,
                **(options or {}).get(name, {}),
            }
        )
    config = GatewayConfig.model_validate(
        {"models": models, "resilience": {"health": FAST_HEALTH, **(resilience or {})}}
    )
    gateway = await start_gateway(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    return Cluster(engines, sidecars, gateway, channel)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Cluster]]:
    made: list[Cluster] = []
    yield made
    for c in made:
        await c.channel.close()
        await c.gateway.stop(0)
        for s in c.sidecars:
            await s.stop(0)


async def stream(
    c: Cluster, model: str = "m", **kw: object
) -> tuple[str, str, list[pb.StreamChatCompletionResponse]]:
    """(served model, backend address, events) of one streamed call."""
    call = c.chat.StreamChatCompletion(pb.StreamChatCompletionRequest(params=params(model, **kw)))
    events = [e async for e in call]
    metadata = dict(await call.initial_metadata())
    return str(metadata["x-llmgw-model"]), str(metadata["x-llmgw-backend"]), events


async def test_failure_before_first_token_is_retried_on_another_endpoint(
    cleanup: list[Cluster],
) -> None:
    c = await cluster({"m": [SimConfig(failure_mode=FailureMode.ERROR_AT_START), SimConfig()]})
    cleanup.append(c)
    results = await asyncio.gather(*(stream(c) for _ in range(20)))
    assert all(events[-1].HasField("end") for _, _, events in results)
    assert {backend for _, backend, _ in results} == {c.address("m", 1)}
    bad, good = c.engines["m"]
    assert good.started == 20 and bad.received > 0


async def test_no_retry_after_the_first_token(cleanup: list[Cluster]) -> None:
    broken = SimConfig(failure_mode=FailureMode.ERROR_AFTER_TOKENS, failure_after_tokens=2)
    c = await cluster({"m": [broken, broken]})
    cleanup.append(c)
    for _ in range(6):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(c)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
    started = sum(e.started for e in c.engines["m"])
    assert started == 6  # one backend call per request: nothing was retried


# Long enough that the healthy replica always answers within it, even on a loaded
# machine; far below the 30 s default, which a hung attempt would otherwise wait.
HUNG_TTFT_S = 1.0


async def test_hung_backend_fails_over_within_the_ttft_timeout(cleanup: list[Cluster]) -> None:
    # Round robin over the untried candidates: every request tries the hung replica
    # first, then the healthy one, so each one proves the timeout and the failover.
    c = await cluster(
        {"m": [SimConfig(failure_mode=FailureMode.HANG), SimConfig()]},
        resilience={"ttft_timeout_s": HUNG_TTFT_S, "breaker": {"consecutive_failures": 100}},
        options={"m": {"lb_policy": "round_robin"}},
    )
    cleanup.append(c)
    hung = c.engines["m"][0]
    loop = asyncio.get_running_loop()
    for i in range(3):
        began = loop.time()
        _, backend, events = await stream(c)
        elapsed = loop.time() - began
        assert events[-1].HasField("end") and backend == c.address("m", 1)
        assert hung.received == i + 1  # the hung replica had it first ...
        # ... until the TTFT timeout (the loop's clock: the timer cannot fire early) ...
        assert elapsed >= HUNG_TTFT_S - 0.01
        # ... and not until the 30 s default: the configured timeout cut it off.
        assert elapsed < 15.0
    await wait_until(lambda: hung.active == 0)  # the hung calls were cancelled


async def test_a_stall_after_the_first_token_ends_with_an_error(cleanup: list[Cluster]) -> None:
    c = await cluster(
        {"m": [SimConfig(failure_mode=FailureMode.STALL_AFTER_TOKENS, failure_after_tokens=2)]},
        resilience={"idle_timeout_s": 0.3},
    )
    cleanup.append(c)
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in c.chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params("m"))
        ):
            seen.append(event.WhichOneof("event"))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen[0] == "start" and "end" not in seen
    await wait_until(lambda: c.engines["m"][0].active == 0)


# Health ejection alone: panic mode (which would still try a wholly unhealthy pool) off.
NO_PANIC = {"panic_threshold_percent": 0}


async def test_a_down_pool_falls_back_to_the_next_model(cleanup: list[Cluster]) -> None:
    c = await cluster(
        {"large": ["127.0.0.1:1"], "small": [SimConfig()]},
        fallbacks={"large": ["small"]},
        options={"large": NO_PANIC},
    )
    cleanup.append(c)
    model, _, events = await stream(c, "large")
    assert model == "small" and events[0].start.model == "small"
    reply = await c.chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=params("large"))
    )
    assert reply.model == "small"
    # Once health checks eject the dead endpoint, no attempt is wasted on it.
    await wait_until(lambda: not c.gateway.service.registry.resolve("large").pool.usable())
    status = (await c.admin())["large"]
    assert not status.endpoints[0].healthy and list(status.fallbacks) == ["small"]


async def test_without_fallback_a_down_pool_is_unavailable_with_retry_after(
    cleanup: list[Cluster],
) -> None:
    c = await cluster({"m": ["127.0.0.1:1"]}, options={"m": NO_PANIC})
    cleanup.append(c)
    await wait_until(lambda: not c.gateway.service.registry.resolve("m").pool.usable())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(c)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("panic_threshold", [50, 0])
async def test_panic_mode_serves_a_pool_whose_health_checks_all_time_out(
    cleanup: list[Cluster], panic_threshold: int
) -> None:
    # Health checks with an impossible deadline time out, as they do on an
    # overloaded machine, while the sidecars themselves serve fine (and once
    # ejected, an endpoint stays out for the whole test).
    # Each answer takes 0.2 s, so the requests below overlap.
    slow = SimConfig(itl_ms=50, output_tokens=4)
    c = await cluster(
        {"m": [slow, slow]},
        resilience={"health": {**FAST_HEALTH, "timeout_s": 1e-6, "healthy_threshold": 10**6}},
        options={"m": {"panic_threshold_percent": panic_threshold}},
    )
    cleanup.append(c)
    pool = c.gateway.service.registry.resolve("m").pool
    await wait_until(lambda: not any(e.healthy for e in pool.endpoints))
    status = (await c.admin())["m"]
    assert status.panic == bool(panic_threshold) and status.lb_policy == "least_load"
    if panic_threshold:
        # At once, so each pick sees the other's requests in flight. (One after another,
        # a stale load report can decide every pick: a rare GetLoad that beats even this
        # deadline, taken while one replica was busy, leaves it looking busier for good.)
        served = await asyncio.gather(*(stream(c) for _ in range(12)))
        assert {backend for _, backend, _ in served} == {c.address("m", 0), c.address("m", 1)}
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(c)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_saturated_pool_queues_then_times_out_or_falls_back(cleanup: list[Cluster]) -> None:
    slow = SimConfig(ttft_ms=400, output_tokens=1)
    c = await cluster(
        {"m": [slow], "spare": [SimConfig()], "lone": [slow]},
        fallbacks={"m": ["spare"]},
        resilience={"queue_timeout_s": 0.1},
        max_inflight=1,
    )
    cleanup.append(c)
    first = asyncio.create_task(stream(c, "m"))
    await wait_until(lambda: c.engines["m"][0].active == 1)
    model, _, _ = await stream(c, "m")  # queued 0.1 s, then the fallback served it
    assert model == "spare"
    assert (await first)[0] == "m"

    lone_first = asyncio.create_task(stream(c, "lone"))
    await wait_until(lambda: c.engines["lone"][0].active == 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(c, "lone")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue" in (caught.value.details() or "")
    await lone_first


async def test_queue_depth_is_visible(cleanup: list[Cluster]) -> None:
    c = await cluster({"m": [SimConfig(ttft_ms=300, output_tokens=1)]}, max_inflight=1)
    cleanup.append(c)
    tasks = [asyncio.create_task(stream(c)) for _ in range(4)]
    await wait_until(lambda: c.gateway.service.registry.resolve("m").pool.queue.depth == 3)
    assert (await c.admin())["m"].queue_depth == 3
    await asyncio.gather(*tasks)
    assert (await c.admin())["m"].queue_depth == 0


async def test_breaker_opens_on_failures_over_grpc(
    cleanup: list[Cluster],
) -> None:
    flaky = SimConfig(failure_mode=FailureMode.ERROR_AT_START)
    c = await cluster(
        {"m": [flaky, SimConfig()]},
        # The cooldown outlasts the 40 requests below even on a slow, busy machine.
        # Half-open and recovery are tested on a fake clock (tests/unit/test_chat_service.py).
        resilience={
            "breaker": {"consecutive_failures": 3, "cooldown_s": 60.0, "half_open_probes": 1}
        },
    )
    cleanup.append(c)
    flaky_engine = c.engines["m"][0]
    for _ in range(20):
        await stream(c)  # every one succeeds: failures are retried on the good replica
    states = {e.address: e.breaker_state for e in (await c.admin())["m"].endpoints}
    assert states[c.address("m", 0)] == admin_pb2.BREAKER_STATE_OPEN
    assert flaky_engine.received == 3
    for _ in range(20):
        await stream(c)
    assert flaky_engine.received == 3  # open: no traffic at all


async def test_retry_budget_stops_retries_during_an_outage(cleanup: list[Cluster]) -> None:
    down = SimConfig(failure_mode=FailureMode.ERROR_AT_START)
    c = await cluster(
        {"m": [down, down, down]},
        resilience={
            "retry": {"max_attempts": 3, "budget_ratio": 0.1, "budget_min_per_s": 0},
            "breaker": {"consecutive_failures": 1000, "min_calls_in_window": 1000},
        },
    )
    cleanup.append(c)
    for _ in range(100):
        with pytest.raises(grpc.aio.AioRpcError):
            await stream(c)
    calls = sum(e.received for e in c.engines["m"])
    # Unbounded, 3 attempts each would be 300 calls; the budget allows its
    # initial allowance (10) plus 10 % of requests.
    assert 100 <= calls <= 125


async def test_sse_sends_keepalives_while_waiting_for_the_first_token(
    cleanup: list[Cluster],
) -> None:
    c = await cluster({"m": [SimConfig(ttft_ms=500, output_tokens=3)]})
    cleanup.append(c)
    shim, task = await start_shim(f"127.0.0.1:{c.gateway.port}", sse_keepalive_s=0.1)
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "a b"}], "stream": True}
            response = await http.post("/v1/chat/completions", json=body)
        events = response.text.split("\n\n")
        assert events[0] == ": keep-alive" and events.count(": keep-alive") >= 3
        assert events[-2] == "data: [DONE]"
        async with openai.AsyncOpenAI(base_url=shim.base_url + "/v1", api_key="x") as client:
            chunks = [
                ch
                async for ch in await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "a b"}], stream=True
                )
            ]
        assert chunks[-1].choices[0].finish_reason == "stop"
    finally:
        shim.server.should_exit = True
        await task


async def test_rest_responses_name_the_serving_model_and_backend(cleanup: list[Cluster]) -> None:
    c = await cluster(
        {"large": ["127.0.0.1:1"], "small": [SimConfig()]}, fallbacks={"large": ["small"]}
    )
    cleanup.append(c)
    shim, task = await start_shim(f"127.0.0.1:{c.gateway.port}")
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            for stream_ in (False, True):
                body = {
                    "model": "large",
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": stream_,
                }
                response = await http.post("/v1/chat/completions", json=body)
                assert response.status_code == 200
                assert response.headers["x-llmgw-model"] == "small"
                assert response.headers["x-llmgw-backend"] == c.address("small", 0)
    finally:
        shim.server.should_exit = True
        await task


async def test_a_restarted_sidecar_is_readmitted_by_health_checks(cleanup: list[Cluster]) -> None:
    c = await cluster({"m": [SimConfig(), SimConfig()]})
    cleanup.append(c)
    pool = c.gateway.service.registry.resolve("m").pool
    victim = c.sidecars[0]
    address = c.address("m", 0)
    await victim.stop(0)
    await wait_until(lambda: not pool.endpoints[0].healthy)
    for _ in range(10):
        assert (await stream(c))[1] == c.address("m", 1)
    port = int(address.rsplit(":", 1)[1])
    c.sidecars[0] = await start_sidecar(SimEngine(SimConfig()), f"127.0.0.1:{port}")
    await wait_until(lambda: pool.endpoints[0].healthy, timeout=5)
    backends = Counter([(await stream(c))[1] for _ in range(30)])
    assert backends[address] > 0


async def test_fallback_skips_models_the_caller_may_not_use(cleanup: list[Cluster]) -> None:
    from gateway.domain.chat import ChatRequest, Finished, Message, Role
    from gateway.errors import BackendUnavailable

    c = await cluster(
        {"large": ["127.0.0.1:1"], "small": [SimConfig()]}, fallbacks={"large": ["small"]}
    )
    cleanup.append(c)
    service = c.gateway.service
    request = ChatRequest(model="large", messages=(Message(Role.USER, "hi"),))
    allowed = await service.complete(await service.admit(request))
    assert allowed.routed.model == "small" and isinstance(allowed.finished, Finished)
    restricted = replace(await service.admit(request), allowed=frozenset({"large"}))
    with pytest.raises(BackendUnavailable):
        await service.complete(restricted)


async def test_a_session_stays_on_one_replica_over_grpc_and_rest(cleanup: list[Cluster]) -> None:
    c = await cluster(
        {"m": [SimConfig(), SimConfig(), SimConfig()]},
        options={"m": {"lb_policy": "prefix_affinity"}},
    )
    cleanup.append(c)
    homes: dict[str, set[str]] = {}
    for i in range(16):
        session = f"conversation-{i % 8}"
        call = c.chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params("m")),
            metadata=(("x-session-id", session),),
        )
        _ = [e async for e in call]
        backend = dict(await call.initial_metadata())["x-llmgw-backend"]
        homes.setdefault(session, set()).add(str(backend))
    assert all(len(b) == 1 for b in homes.values())  # each session on one replica
    assert len(set().union(*homes.values())) >= 2  # and sessions spread (all 8 on one: 0.05 %)
    shim, task = await start_shim(f"127.0.0.1:{c.gateway.port}")
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            for session, (home,) in homes.items():
                response = await http.post(
                    "/v1/chat/completions", json=body, headers={"x-session-id": session}
                )
                assert response.status_code == 200
                assert response.headers["x-llmgw-backend"] == home  # same key over REST
    finally:
        shim.server.should_exit = True
        await task
