"""One contract suite for both implementations of each store port: the in-memory
stores (one process) and the Redis ones (Lua scripts on a real redis-server).

The limit store's parity test runs the same scripted sequence of admissions,
releases and charges against both and compares every decision: the Lua token
bucket and the Python one must agree on what is admitted, which limits
refuse, what remains and when to retry. Refill is slow (0.1 token a second)
and the in-memory clock frozen, so the milliseconds Redis's own clock moves
during the run cannot change a decision.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.adapters.redis_conn import connect
from gateway.adapters.redis_limits import RedisLimitStore
from gateway.adapters.redis_metering import RedisUsageStore
from gateway.limits.memory import InMemoryLimitStore
from gateway.limits.ports import (
    CONCURRENCY,
    MONTHLY,
    REQUESTS,
    TOKENS,
    TOO_LARGE,
    Decision,
    LimitStore,
    TenantLimits,
)
from gateway.metering.memory import InMemoryUsageStore
from gateway.metering.model import CANCELLED, ERROR, OK, Granularity, UsageEvent
from gateway.metering.ports import UsageStore
from tests.redis_server import RedisServer

# 6 a minute: 0.1 a second, so a test run's real time refills nothing visible.
LIMITS = TenantLimits(
    requests_per_minute=6,
    tokens_per_minute=6,
    max_concurrent=2,
    requests_burst=4,
    tokens_burst=100,
    monthly_tokens=260,
)
MONTH = "202612"


@pytest.fixture(params=["memory", "redis"])
async def limit_store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[LimitStore]:
    if request.param == "memory":
        yield InMemoryLimitStore(clock=lambda: 1000.0)  # frozen: no refill at all
        return
    client = connect(redis_server.url)
    try:
        yield RedisLimitStore(client)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def usage_store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[UsageStore]:
    if request.param == "memory":
        yield InMemoryUsageStore()
        return
    client = connect(redis_server.url)
    try:
        yield RedisUsageStore(client)
    finally:
        await client.aclose()


def seen(decision: Decision) -> tuple[Any, ...]:
    """What a client is told, retry hint rounded to the second."""
    retry = decision.retry_after_s
    return (
        decision.admitted,
        tuple(sorted(decision.violations)),
        decision.requests.remaining,
        decision.tokens.remaining,
        decision.in_flight,
        decision.month_used,
        None if retry is None else round(retry),
    )


async def script(store: LimitStore) -> list[tuple[Any, ...]]:
    """A sequence that touches every limit and both reconcile directions."""
    out: list[tuple[Any, ...]] = []

    async def acquire(rid: str, tokens: int) -> None:
        out.append(
            ("acquire", rid, *seen(await store.acquire("t", LIMITS, rid, tokens, MONTH, 60)))
        )

    async def release(rid: str, used: int) -> None:
        out.append(("release", rid, await store.release("t", LIMITS, rid, used, MONTH)))

    await acquire("r1", 40)  # admitted
    await acquire("r2", 50)  # admitted: both slots taken
    await acquire("r3", 5)  # concurrency
    await release("r1", 10)  # 30 back
    await release("r1", 10)  # idempotent: None
    await acquire("r3", 30)  # admitted
    await acquire("r4", 1)  # concurrency (and the requests bucket is at 1)
    await release("r2", 80)  # 30 more than reserved: tokens go into debt
    await release("r3", 30)
    await acquire("r5", 1)  # tokens in debt
    await acquire("big", 101)  # larger than the burst: never fits
    await store.charge("t", LIMITS, "c1", 1, 5, MONTH)
    await store.charge("t", LIMITS, "c1", 1, 5, MONTH)  # idempotent
    await acquire("r6", 1)  # requests exhausted too now
    return out


async def test_lua_and_python_token_buckets_decide_alike(redis_server: RedisServer) -> None:
    assert LIMITS.tokens.rate_per_s * 5 < 1  # a run's real time cannot refill a token
    memory = await script(InMemoryLimitStore(clock=lambda: 1000.0))
    client = connect(redis_server.url)
    try:
        redis = await script(RedisLimitStore(client))
    finally:
        await client.aclose()
    assert redis == memory
    # And the sequence did reach every branch it is meant to compare.
    refused = {v for step in memory if step[0] == "acquire" for v in step[3]}
    assert refused >= {CONCURRENCY, TOKENS, REQUESTS, TOO_LARGE}
    assert ("release", "r1", None) in memory and ("release", "r1", 30) in memory


async def test_admission_is_all_or_nothing(limit_store: LimitStore) -> None:
    first = await limit_store.acquire("t", LIMITS, "a", 90, MONTH, 60)
    assert first.admitted and first.tokens.remaining == 10 and first.requests.remaining == 3
    refused = await limit_store.acquire("t", LIMITS, "b", 20, MONTH, 60)
    assert not refused.admitted and refused.violations == (TOKENS,)
    # Nothing was taken by the refusal: the requests bucket and the slots are as before.
    assert refused.requests.remaining == 3 and refused.in_flight == 1
    assert refused.retry_after_s == pytest.approx(100.0, abs=1.0)  # 10 short at 0.1/s


async def test_the_monthly_quota_counts_what_was_used(limit_store: LimitStore) -> None:
    assert (await limit_store.acquire("t", LIMITS, "a", 100, MONTH, 60)).admitted
    assert await limit_store.release("t", LIMITS, "a", 100, MONTH) == 0
    await limit_store.charge("t", LIMITS, "c", 1, 150, MONTH)
    over = await limit_store.acquire("t", LIMITS, "b", 20, MONTH, 60)
    assert MONTHLY in over.violations and over.month_used == 250
    # Another month starts from zero.
    assert (await limit_store.acquire("t", LIMITS, "b", 1, "202701", 60)).month_used >= 0


async def test_tenants_do_not_share_buckets(limit_store: LimitStore) -> None:
    assert (await limit_store.acquire("a", LIMITS, "1", 100, MONTH, 60)).admitted
    other = await limit_store.acquire("b", LIMITS, "1", 100, MONTH, 60)
    assert other.admitted and other.in_flight == 1


def event(rid: str, tenant: str = "acme", model: str = "m", status: str = OK) -> UsageEvent:
    return UsageEvent(
        request_id=rid,
        tenant=tenant,
        key_id="k",
        model=model,
        backend="b",
        prompt_tokens=10,
        completion_tokens=5,
        status=status,
        started_at=1_765_000_000.0,  # a fixed hour, so both stores bucket alike
        duration_ms=3,
    )


async def test_usage_is_counted_once_per_request_and_read_back_alike(
    usage_store: UsageStore,
) -> None:
    await usage_store.record([event("1"), event("2", status=ERROR), event("3", model="n")])
    await usage_store.record([event("2", status=ERROR), event("4", status=CANCELLED)])  # "2" again
    await usage_store.record([event("5", tenant="other")])
    start, end = 1_765_000_000.0 - 10, 1_765_000_000.0 + 10
    rows = await usage_store.query(["acme"], Granularity.HOUR, start, end)
    got = {
        (r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.errors, r.cancelled)
        for r in rows
    }
    assert got == {("m", 3, 30, 15, 1, 1), ("n", 1, 10, 5, 0, 0)}
    assert all(r.tenant == "acme" and r.granularity is Granularity.HOUR for r in rows)
    only_n = await usage_store.query(["acme"], Granularity.DAY, start, end, model="n")
    assert [(r.model, r.requests) for r in only_n] == [("n", 1)]
    both = await usage_store.query(["acme", "other"], Granularity.DAY, start, end)
    assert {r.tenant for r in both} == {"acme", "other"}
    assert (
        await usage_store.query(["acme"], Granularity.DAY, end + 3 * 86400, end + 4 * 86400) == []
    )
