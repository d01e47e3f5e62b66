"""Redis killed and restarted under load, under both failure policies.

Fail-open keeps serving (limits counted per process) and, once Redis is
back, charges what it served and writes the buffered usage events.
Fail-closed answers 503 with Retry-After (UNAVAILABLE with RetryInfo)
while Redis is down. Either way nothing crashes and service resumes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
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


@dataclass
class Load:
    """What the load workers did: (started, ended, outcome) of every request, on the
    loop's clock, so each phase counts only the requests that began in it."""

    calls: list[tuple[float, float, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    workers: int = 8

    def outcomes(self, since: float, until: float = math.inf) -> Counter[str]:
        """Outcomes of the requests that started at or after ``since`` and ended before ``until``."""
        return Counter(o for s, e, o in self.calls if s >= since and e < until)

    def ok(self, since: float) -> int:
        return self.outcomes(since)["ok"]

    async def run(self, d: Deployment, key: str) -> None:
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while not self.stop.is_set():
                started = loop.time()
                try:
                    await d.chat.CreateChatCompletion(
                        pb.CreateChatCompletionRequest(params=params(max_tokens=4)),
                        metadata=bearer(key),
                        timeout=30,
                    )
                    outcome = "ok"
                except grpc.aio.AioRpcError as error:
                    outcome = error.code().name
                self.calls.append((started, loop.time(), outcome))
                if outcome != "ok":
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(self.workers)))


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


async def test_fail_open_serves_through_an_outage_and_reconciles_after(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    d, keys = await start(tmp_path, redis_server, FailurePolicy.OPEN)
    tenancy = d.gateway.tenancy
    assert tenancy is not None
    limiter, meter = tenancy.limiter, tenancy.meter
    loop = asyncio.get_running_loop()
    load = Load()
    runner = asyncio.create_task(load.run(d, keys["acme"]))
    try:
        began = loop.time()
        await wait_until(lambda: load.ok(began) > 10)
        assert set(load.outcomes(began)) == {"ok"}
        redis_server.kill()
        killed = loop.time()
        # Still serving, limits counted here, usage events waiting for Redis (not dropped).
        await wait_until(
            lambda: (
                load.ok(killed) > 10
                and (limiter.store_down or limiter.pending > 0)
                and meter.buffered > 0
            )
        )
        redis_server.start()  # a fresh, empty Redis on the same port
        restarted = loop.time()
        during = load.outcomes(killed, until=restarted)  # started and ended in the outage
        assert during["ok"] > 10 and set(during) == {"ok"}, during
        await wait_until(
            lambda: limiter.pending == 0 and meter.buffered == 0 and not limiter.store_down
        )
        recovered = loop.time()
        await wait_until(lambda: load.ok(recovered) > 10)
        assert set(load.outcomes(recovered)) == {"ok"}
        load.stop.set()
        await runner
        await tenancy.admission.drain()
        await meter.flush()
        # What was served during the outage was charged to the shared bucket and metered:
        # one idempotent charge per request admitted here while Redis was gone.
        client = limiter._store._client  # type: ignore[attr-defined]
        charged = [k async for k in client.scan_iter("{llmgw:acme}:ch:*")]
        assert len(charged) >= during["ok"], (len(charged), during)
        events = await meter.store.events("acme", count=100_000)  # type: ignore[attr-defined]
        assert len(events) >= during["ok"]
        assert meter.dropped == 0
    finally:
        load.stop.set()
        await runner
        await stop(d)
    assert "Traceback" not in caplog.text


async def test_fail_closed_answers_503_with_retry_after_and_recovers(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    d, keys = await start(tmp_path, redis_server, FailurePolicy.CLOSED)
    shim, shim_task = await start_shim(d.address)
    loop = asyncio.get_running_loop()
    load = Load()
    runner = asyncio.create_task(load.run(d, keys["acme"]))
    try:
        began = loop.time()
        await wait_until(lambda: load.ok(began) > 0)
        assert set(load.outcomes(began)) == {"ok"}
        redis_server.kill()
        killed = loop.time()
        await wait_until(lambda: load.outcomes(killed)["UNAVAILABLE"] > 10)
        during = load.outcomes(killed)
        assert set(during) <= {"UNAVAILABLE", "ok"}, during
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
        redis_server.start()
        restarted = loop.time()
        await wait_until(lambda: load.ok(restarted) > 0)  # it recovers by itself
        recovered = loop.time()
        await wait_until(lambda: load.ok(recovered) > 10)
        assert set(load.outcomes(recovered)) == {"ok"}  # and stays recovered
    finally:
        load.stop.set()
        await runner
        shim.server.should_exit = True
        await shim_task
        await stop(d)
    assert "Traceback" not in caplog.text
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and "unexpected" in r.getMessage()
    ]
