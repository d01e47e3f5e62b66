"""Redis killed and restarted under load, under both failure policies.

Fail-open keeps serving (limits counted per process) and, once Redis is
back, charges what it served and writes the buffered usage events.
Fail-closed answers 503 with Retry-After (UNAVAILABLE with RetryInfo)
while Redis is down. Either way nothing crashes and service resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import pytest

from backends.engines.sim import SimConfig
from gateway.limits.limiter import FailurePolicy
from gateway.tenancy.runtime import TenancyOptions
from llmgw.v1 import chat_pb2 as pb
from tests.conftest import Deployment, deploy, params, start_shim, wait_until
from tests.redis_server import RedisServer
from tests.tenancy_helpers import bearer, tenant, write_tenants


async def load(
    d: Deployment, key: str, stop: asyncio.Event, outcomes: Counter[str], workers: int = 8
) -> None:
    async def worker() -> None:
        while not stop.is_set():
            try:
                await d.chat.CreateChatCompletion(
                    pb.CreateChatCompletionRequest(params=params(max_tokens=4)),
                    metadata=bearer(key),
                    timeout=5,
                )
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker() for _ in range(workers)))


async def start(
    tmp_path: Path, redis: RedisServer, policy: FailurePolicy
) -> tuple[Deployment, dict[str, str]]:
    path = tmp_path / "tenants.yaml"
    keys = write_tenants(path, [tenant("acme", rpm=100_000, tpm=10_000_000, concurrent=100)])
    d = await deploy(
        {"sim-small": SimConfig(output_tokens=4, itl_ms=1)},
        tenancy=TenancyOptions(tenants_file=path, redis_url=redis.url, failure_policy=policy),
    )
    return d, keys


async def stop(d: Deployment) -> None:
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


def phase(outcomes: Counter[str]) -> Counter[str]:
    snapshot = Counter(outcomes)
    outcomes.clear()
    return snapshot


async def test_fail_open_serves_through_an_outage_and_reconciles_after(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    d, keys = await start(tmp_path, redis_server, FailurePolicy.OPEN)
    tenancy = d.gateway.tenancy
    assert tenancy is not None
    limiter, meter = tenancy.limiter, tenancy.meter
    stop_load, outcomes = asyncio.Event(), Counter[str]()
    runner = asyncio.create_task(load(d, keys["acme"], stop_load, outcomes))
    try:
        await asyncio.sleep(0.5)
        before = phase(outcomes)
        assert before["ok"] > 10 and set(before) == {"ok"}
        redis_server.kill()
        await asyncio.sleep(1.0)
        during = phase(outcomes)
        assert during["ok"] > 10 and set(during) == {"ok"}, during  # still serving
        assert limiter.store_down or limiter.pending > 0
        assert meter.buffered > 0  # usage events wait for Redis, not dropped
        redis_server.start()  # a fresh, empty Redis on the same port
        await wait_until(
            lambda: limiter.pending == 0 and meter.buffered == 0 and not limiter.store_down,
            timeout=15,
        )
        after = phase(outcomes)
        assert after["ok"] > 10 and set(after) == {"ok"}, after
        stop_load.set()
        await runner
        await tenancy.admission.drain()
        await meter.flush()
        # What was served during the outage was charged to the shared bucket and metered.
        client = limiter._store._client  # type: ignore[attr-defined]
        charged = [k async for k in client.scan_iter("{llmgw:acme}:ch:*")]
        assert (
            len(charged) >= 0.9 * during["ok"]
        )  # one idempotent charge per request served locally
        events = await meter.store.events("acme", count=100_000)  # type: ignore[attr-defined]
        assert len(events) >= during["ok"]
        assert meter.dropped == 0
    finally:
        stop_load.set()
        await runner
        await stop(d)
    assert "Traceback" not in caplog.text


async def test_fail_closed_answers_503_with_retry_after_and_recovers(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    d, keys = await start(tmp_path, redis_server, FailurePolicy.CLOSED)
    shim, shim_task = await start_shim(d.address)
    stop_load, outcomes = asyncio.Event(), Counter[str]()
    runner = asyncio.create_task(load(d, keys["acme"], stop_load, outcomes))
    try:
        await asyncio.sleep(0.5)
        assert set(phase(outcomes)) == {"ok"}
        redis_server.kill()
        await asyncio.sleep(1.0)
        during = phase(outcomes)
        assert during["UNAVAILABLE"] > 10 and set(during) <= {"UNAVAILABLE", "ok"}, during
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await d.chat.CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params()), metadata=bearer(keys["acme"])
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with httpx.AsyncClient(base_url=shim.base_url) as http:
            answer = await http.post(
                "/v1/chat/completions",
                json={"model": "small", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {keys['acme']}"},
            )
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "rate_limiter_unavailable"
        started = time.monotonic()
        redis_server.start()
        while phase(outcomes)["ok"] == 0:
            assert time.monotonic() - started < 15, "did not recover"
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        assert set(phase(outcomes)) == {"ok"}
    finally:
        stop_load.set()
        await runner
        shim.server.should_exit = True
        await shim_task
        await stop(d)
    assert "Traceback" not in caplog.text
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and "unexpected" in r.getMessage()
    ]
