"""Token bucket math and the in-memory limit store, on a fake clock."""

from __future__ import annotations

import math

import pytest

from gateway.limits import bucket
from gateway.limits.bucket import BucketSpec, BucketState
from gateway.limits.memory import InMemoryLimitStore
from gateway.limits.ports import CONCURRENCY, MONTHLY, REQUESTS, TOKENS, TOO_LARGE, TenantLimits


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SPEC = BucketSpec.per_minute(60, burst=10)  # 1 a second, at most 10 at once


def test_per_minute_defaults_the_burst_to_one_minute() -> None:
    assert BucketSpec.per_minute(600) == BucketSpec(capacity=600.0, rate_per_s=10.0)
    assert BucketSpec.per_minute(600, 50).capacity == 50


def test_a_new_bucket_is_full_and_refills_up_to_capacity_only() -> None:
    state = bucket.full(SPEC, 0.0)
    assert bucket.level_at(SPEC, state, 0.0) == 10
    drained = bucket.take(SPEC, state, 10, 0.0)
    assert drained is not None and bucket.level_at(SPEC, drained, 0.0) == 0
    assert bucket.level_at(SPEC, drained, 3.5) == pytest.approx(3.5)
    assert bucket.level_at(SPEC, drained, 1000.0) == 10


def test_take_refuses_what_does_not_fit_without_changing_anything() -> None:
    state = BucketState(2.0, 0.0)
    assert bucket.take(SPEC, state, 3, 0.0) is None
    assert bucket.take(SPEC, state, 3, 1.0) == BucketState(0.0, 1.0)


def test_wait_for_and_reset_after() -> None:
    assert bucket.wait_for(SPEC, 2.0, 5) == pytest.approx(3.0)
    assert bucket.wait_for(SPEC, 7.0, 5) == 0.0
    assert math.isinf(bucket.wait_for(SPEC, 10.0, 11))  # larger than the burst: never
    assert bucket.reset_after(SPEC, 4.0) == pytest.approx(6.0)
    assert bucket.reset_after(SPEC, 10.0) == 0.0


def test_adjust_refunds_up_to_capacity_and_charges_into_debt() -> None:
    state = BucketState(8.0, 0.0)
    assert bucket.adjust(SPEC, state, 5, 0.0).level == 10  # capped
    debt = bucket.adjust(SPEC, BucketState(1.0, 0.0), -4, 0.0)
    assert debt.level == -3
    # Debt is paid back by refill before anything else fits.
    assert bucket.take(SPEC, debt, 1, 3.9) is None
    assert bucket.take(SPEC, debt, 1, 4.0) is not None


def test_the_clock_going_backwards_refills_nothing() -> None:
    assert bucket.level_at(SPEC, BucketState(3.0, 10.0), 5.0) == 3.0


LIMITS = TenantLimits(
    requests_per_minute=60, tokens_per_minute=600, max_concurrent=2, tokens_burst=100
)


async def test_memory_store_admits_all_or_nothing_and_says_why() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    first = await store.acquire("t", LIMITS, "r1", 60, "202611", 600)
    assert first.admitted and first.tokens.remaining == 40 and first.requests.remaining == 59
    assert first.tokens.limit == 600 and first.tokens.reset_s == pytest.approx(6.0)
    refused = await store.acquire("t", LIMITS, "r2", 60, "202611", 60)
    assert not refused.admitted and refused.violations == (TOKENS,)
    assert refused.retry_after_s == pytest.approx(2.0)  # 20 short at 10/s
    assert refused.tokens.remaining == 40  # nothing was taken
    clock.now += 2
    assert (await store.acquire("t", LIMITS, "r2", 60, "202611", 600)).admitted
    # Two in flight: the concurrency cap refuses a third even with tokens to spare.
    clock.now += 60
    third = await store.acquire("t", LIMITS, "r3", 1, "202611", 600)
    assert not third.admitted and third.violations == (CONCURRENCY,)
    await store.release("t", LIMITS, "r1", 60, "202611")
    assert (await store.acquire("t", LIMITS, "r3", 1, "202611", 60)).admitted


async def test_memory_store_requests_bucket() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    limits = TenantLimits(
        requests_per_minute=60, tokens_per_minute=10**6, max_concurrent=100, requests_burst=3
    )
    for i in range(3):
        assert (await store.acquire("t", limits, f"r{i}", 1, "m", 60)).admitted
    refused = await store.acquire("t", limits, "r9", 1, "m", 60)
    assert refused.violations == (REQUESTS,) and refused.retry_after_s == pytest.approx(1.0)


async def test_release_refunds_the_difference_once() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    await store.acquire("t", LIMITS, "r1", 80, "m", 60)
    assert await store.release("t", LIMITS, "r1", 30, "m") == 50
    assert await store.release("t", LIMITS, "r1", 30, "m") is None  # idempotent
    assert (await store.acquire("t", LIMITS, "r2", 70, "m", 60)).tokens.remaining == 0


async def test_release_charges_usage_above_the_reservation() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    await store.acquire("t", LIMITS, "r1", 50, "m", 60)
    assert await store.release("t", LIMITS, "r1", 120, "m") == -70  # level 50 - 70 = -20
    refused = await store.acquire("t", LIMITS, "r2", 1, "m", 60)
    assert refused.violations == (TOKENS,) and refused.retry_after_s == pytest.approx(2.1)


async def test_leases_expire_so_a_crash_cannot_hold_a_slot_forever() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    await store.acquire("t", LIMITS, "r1", 1, "m", 30)
    await store.acquire("t", LIMITS, "r2", 1, "m", 30)
    assert not (await store.acquire("t", LIMITS, "r3", 1, "m", 30)).admitted
    clock.now += 20
    await store.renew("t", ["r2"], 30)  # r2 is still running; r1's owner died
    clock.now += 15
    assert (await store.acquire("t", LIMITS, "r3", 1, "m", 30)).admitted
    assert not (await store.acquire("t", LIMITS, "r4", 1, "m", 30)).admitted  # r2 renewed


async def test_too_large_and_monthly_quota_say_waiting_will_not_help() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    too_large = await store.acquire("t", LIMITS, "r1", 101, "m", 60)
    assert too_large.violations == (TOO_LARGE,) and too_large.retry_after_s is None
    quota = TenantLimits(60, 600, 5, tokens_burst=100, monthly_tokens=150)
    assert (await store.acquire("q", quota, "a", 100, "202611", 60)).admitted
    over = await store.acquire("q", quota, "b", 60, "202611", 60)
    assert MONTHLY in over.violations and over.retry_after_s is None
    assert over.month_used == 100
    clock.now += 30  # tokens refilled: only the quota still refuses
    assert (await store.acquire("q", quota, "b", 60, "202611", 60)).violations == (MONTHLY,)
    assert (await store.acquire("q", quota, "c", 60, "202612", 60)).admitted  # a new month


async def test_charge_is_idempotent() -> None:
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    await store.charge("t", LIMITS, "c1", 1, 90, "m")
    await store.charge("t", LIMITS, "c1", 1, 90, "m")
    assert (await store.acquire("t", LIMITS, "r", 10, "m", 60)).tokens.remaining == 0
