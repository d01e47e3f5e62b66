"""The Redis stores against a real redis-server (and a real 3-node Cluster):
atomic admission on the server's clock, shared by replicas, reconcile,
lease expiry, idempotent metering, and the usage stream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.adapters import redis_conn
from gateway.adapters.redis_conn import RedisClient, tenant_tag
from gateway.adapters.redis_limits import RedisLimitStore
from gateway.adapters.redis_metering import RedisUsageStore
from gateway.limits.limiter import FailurePolicy, Limiter
from gateway.limits.ports import (
    CONCURRENCY,
    MONTHLY,
    REQUESTS,
    TOKENS,
    TOO_LARGE,
    Decision,
    TenantLimits,
)
from gateway.metering.model import Granularity, UsageEvent
from tests.redis_server import RedisServer

LIMITS = TenantLimits(
    requests_per_minute=600, tokens_per_minute=6000, max_concurrent=3, tokens_burst=1000
)
# What these tests check is the scripts' arithmetic, not the store's timeout: a
# generous one, so a loaded machine (or a cluster client finding its slots) is
# never mistaken for an outage (tests/integration/test_redis_outage.py covers that).
TIMEOUT_S = 10.0


def connect(url: str, cluster: bool = False) -> RedisClient:
    return redis_conn.connect(url, cluster=cluster, timeout_s=TIMEOUT_S)


def limit_store(client: RedisClient) -> RedisLimitStore:
    return RedisLimitStore(client, timeout_s=TIMEOUT_S)


async def limit_store_behaves(client: RedisClient, tenant: str) -> None:
    store = limit_store(client)
    began = time.monotonic()
    first = await store.acquire(tenant, LIMITS, "r1", 600, "202611", 60)
    # A new bucket starts full (1000): 400 left, 600 short of full at 100/s.
    assert first.admitted and first.violations == ()
    assert first.tokens.remaining == 400 and first.tokens.limit == 6000
    assert first.requests.remaining == 599 and first.tokens.reset_s == pytest.approx(6.0, abs=0.002)
    refused = await store.acquire(tenant, LIMITS, "r2", 600, "202611", 60)
    between = time.monotonic() - began  # at least the server's time between the two calls
    assert not refused.admitted and refused.violations == (TOKENS,)
    # 200 short at 100/s, less what refilled between the calls (rounded up to a ms).
    assert 2.0 - between - 0.002 <= refused.retry_after_s <= 2.0 + 0.002  # type: ignore[operator]
    # Reconcile: 600 reserved, 100 used: 500 come back, once.
    assert await store.release(tenant, LIMITS, "r1", 100, "202611") == 500
    assert await store.release(tenant, LIMITS, "r1", 100, "202611") is None
    assert (await store.acquire(tenant, LIMITS, "r2", 600, "202611", 60)).admitted
    too_large = await store.acquire(tenant, LIMITS, "big", 1001, "202611", 60)
    assert TOO_LARGE in too_large.violations and too_large.retry_after_s is None


async def test_single_redis_admission_and_reconcile(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    try:
        await limit_store_behaves(client, "acme")
        # Keys carry the tenant's hash tag and expire: an idle tenant leaves nothing for ever.
        keys = sorted(await client.keys("*"))
        assert keys and all(k.startswith(tenant_tag("acme")) for k in keys)
        assert all([await client.pttl(k) > 0 for k in keys])
    finally:
        await client.aclose()


async def test_concurrency_leases_expire_and_renew(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    store = limit_store(client)
    lease_s = 1.5  # the three calls after the first acquire run well within it, even loaded
    try:
        for rid in ("a", "b", "c"):
            assert (await store.acquire("t", LIMITS, rid, 1, "m", lease_s)).admitted
        acquired = time.monotonic()  # a, b and c's leases end by acquired + lease_s
        full = await store.acquire("t", LIMITS, "d", 1, "m", lease_s)
        assert full.violations == (CONCURRENCY,) and full.in_flight == 3
        await store.renew("t", ["c"], 60)  # c's replica is alive; a and b's crashed
        # Wait out a and b's leases (Redis keeps time by this machine's clock).
        await asyncio.sleep(acquired + lease_s + 0.05 - time.monotonic())
        assert (await store.acquire("t", LIMITS, "d", 1, "m", lease_s)).admitted
        assert (await store.acquire("t", LIMITS, "e", 1, "m", lease_s)).admitted
        assert (await store.acquire("t", LIMITS, "f", 1, "m", lease_s)).violations == (CONCURRENCY,)
        # An expired reservation's late release changes nothing (no double refund).
        assert await store.release("t", LIMITS, "a", 0, "m") is None
    finally:
        await client.aclose()


async def test_requests_bucket_monthly_quota_and_charges(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    store = limit_store(client)
    limits = TenantLimits(
        requests_per_minute=1,  # a burst of 2 and no refill to speak of during the test
        tokens_per_minute=10**6,
        max_concurrent=100,
        requests_burst=2,
        monthly_tokens=1000,
    )
    try:
        assert (await store.acquire("q", limits, "1", 400, "202611", 60)).admitted
        assert (await store.acquire("q", limits, "2", 400, "202611", 60)).admitted
        third = await store.acquire("q", limits, "3", 400, "202611", 60)
        assert set(third.violations) == {REQUESTS, MONTHLY} and third.retry_after_s is None
        assert third.month_used == 800
        await store.release("q", limits, "1", 100, "202611")  # the month gets the 300 back
        assert await client.get(f"{tenant_tag('q')}:m:202611") == "500"
        await store.charge("q", limits, "c1", 1, 50, "202611")
        await store.charge("q", limits, "c1", 1, 50, "202611")  # idempotent
        assert await client.get(f"{tenant_tag('q')}:m:202611") == "550"
    finally:
        await client.aclose()


async def test_replicas_share_one_bucket(redis_server: RedisServer) -> None:
    """Four limiters (four replicas) hammering one tenant admit no more than the bucket holds."""
    clients = [connect(redis_server.url) for _ in range(4)]
    limiters = [Limiter(limit_store(c)) for c in clients]
    limits = TenantLimits(
        requests_per_minute=60_000, tokens_per_minute=60, max_concurrent=1000, tokens_burst=500
    )
    try:

        async def hammer(limiter: Limiter, n: int) -> int:
            admitted = 0
            for i in range(n):
                r = await limiter.acquire("shared", limits, f"{id(limiter)}-{i}", 7)
                admitted += r.decision.admitted
            return admitted

        began = time.monotonic()
        results = await asyncio.gather(*(hammer(lim, 50) for lim in limiters))
        refilled = time.monotonic() - began  # 1 token a second, for at most this long
        # 500 tokens of burst, plus the refill: 71 requests of 7 tokens, more if slow.
        assert 71 <= sum(results) <= (500 + refilled) // 7, (results, refilled)
        assert all(r > 0 for r in results)
    finally:
        for c in clients:
            await c.aclose()


def event(
    request_id: str, tenant: str = "acme", status: str = "ok", model: str = "m:v1"
) -> UsageEvent:
    return UsageEvent(
        request_id=request_id, tenant=tenant, key_id="0123456789ab", model=model, backend="127.0.0.1:1",
        prompt_tokens=10, completion_tokens=5, status=status, started_at=time.time(), duration_ms=12, ttft_ms=3,
    )  # fmt: skip


async def metering_behaves(client: RedisClient) -> None:
    store = RedisUsageStore(client, timeout_s=TIMEOUT_S)
    await store.record(
        [event("a"), event("b", status="error"), event("c", status="cancelled", tenant="beta")]
    )
    await store.record(
        [event("a"), event("b", status="error")]
    )  # a retried batch counts nothing twice
    now = time.time()
    (acme,) = await store.query(["acme"], Granularity.HOUR, now - 60, now)
    assert (acme.model, acme.requests, acme.prompt_tokens, acme.completion_tokens) == (
        "m:v1",
        2,
        20,
        10,
    )
    assert (acme.errors, acme.cancelled) == (1, 0)
    rows = await store.query(["acme", "beta"], Granularity.DAY, now - 86400, now)
    assert [(r.tenant, r.requests, r.cancelled) for r in rows] == [("acme", 2, 0), ("beta", 1, 1)]
    exported = await store.events("acme")
    assert [e["request_id"] for e in exported] == ["a", "b"] and exported[1]["status"] == "error"
    assert exported[0]["prompt_tokens"] == "10" and exported[0]["backend"] == "127.0.0.1:1"
    assert await store.events("acme", after=exported[0]["id"]) == exported[1:]


async def test_metering_is_idempotent_and_streams_every_event(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    try:
        await metering_behaves(client)
    finally:
        await client.aclose()


async def test_metering_reloads_its_script_after_a_redis_restart(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    store = RedisUsageStore(client, timeout_s=TIMEOUT_S)
    try:
        await store.record([event("x")])
        redis_server.restart()
        from gateway.limits.ports import StoreUnavailable

        for _ in range(3):  # the first call after the restart may meet the dead connection
            try:
                await store.record([event("y")])
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        assert [e["request_id"] for e in await store.events("acme")] == ["y"]
    finally:
        await client.aclose()


async def test_redis_cluster(redis_cluster: list[RedisServer]) -> None:
    """The same scripts on a 3-node Cluster: each tenant's keys share a slot."""
    client = connect(redis_cluster[0].url, cluster=True)
    try:
        tenants = [f"tenant{i}" for i in range(6)]
        for name in tenants:
            await limit_store_behaves(client, name)
        await metering_behaves(client)
        # The tenants really are spread over the nodes.
        holders = {i for i, s in enumerate(redis_cluster) if s.cli("dbsize").strip() != "0"}
        assert len(holders) >= 2
        limiter = Limiter(limit_store(client), FailurePolicy.CLOSED)
        r = await limiter.acquire("tenant0", LIMITS, "lim", 1)
        await limiter.release(r, 1)
        await limiter.renew()
    finally:
        await client.aclose()


class HeldReply(RedisLimitStore):
    """Redis takes the reservation; its answer reaches the caller when the test says."""

    def __init__(self, client: RedisClient) -> None:
        super().__init__(client, timeout_s=TIMEOUT_S)
        self.taken = asyncio.Event()
        self.answer = asyncio.Event()

    async def acquire(self, *args: Any) -> Decision:
        decision = await super().acquire(*args)
        self.taken.set()
        await self.answer.wait()
        return decision


async def test_a_cancel_during_admission_gives_back_what_redis_reserved(
    redis_server: RedisServer,
) -> None:
    # The caller left (a client gone, its deadline) between Redis taking the reservation
    # and the answer: the concurrency slot must come back now, not when its lease ends.
    client = connect(redis_server.url)
    store = HeldReply(client)
    limiter = Limiter(store, lease_s=600)
    limiter.start()
    one = TenantLimits(
        requests_per_minute=600, tokens_per_minute=6000, max_concurrent=1, tokens_burst=1000
    )
    try:
        admitting = asyncio.create_task(limiter.acquire("t", one, "r1", 10))
        await store.taken.wait()
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        store.answer.set()
        probe = limit_store(client)
        admitted: list[bool] = []

        async def try_again() -> None:
            while not admitted or not admitted[-1]:
                decision = await probe.acquire("t", one, "r2", 10, "m", 600)
                admitted.append(decision.admitted)
                await asyncio.sleep(0.05)

        await asyncio.wait_for(try_again(), 20)  # the lease runs for 600 s
    finally:
        await limiter.close()
        await client.aclose()
