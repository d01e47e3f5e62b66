"""The limiter's policies when the shared store fails: fail-open, fail-closed, reconcile later."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.errors import LimiterUnavailable
from gateway.limits.limiter import FailurePolicy, Limiter
from gateway.limits.memory import InMemoryLimitStore
from gateway.limits.ports import CONCURRENCY, Decision, StoreUnavailable, TenantLimits
from gateway.tenancy.runtime import TenancyOptions
from tests.unit.test_token_bucket import FakeClock

LIMITS = TenantLimits(requests_per_minute=600, tokens_per_minute=6000, max_concurrent=10)


class FlakyStore(InMemoryLimitStore):
    """An in-memory store that can be switched off, counting the calls it refused."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.down = False
        self.refused = 0

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("ConnectionError")

    async def acquire(self, *args: object, **kw: object) -> Decision:  # type: ignore[override]
        self._check()
        return await super().acquire(*args, **kw)  # type: ignore[arg-type]

    async def release(self, *args: object) -> int | None:  # type: ignore[override]
        self._check()
        return await super().release(*args)  # type: ignore[arg-type]

    async def charge(self, *args: object) -> None:  # type: ignore[override]
        self._check()
        await super().charge(*args)  # type: ignore[arg-type]

    async def renew(self, tenant: str, reservations: Sequence[str], lease_s: float) -> None:
        self._check()
        await super().renew(tenant, reservations, lease_s)


def make(policy: FailurePolicy) -> tuple[Limiter, FlakyStore, FakeClock]:
    clock = FakeClock()
    store = FlakyStore(clock)
    limiter = Limiter(store, policy, clock=lambda: 1_764_000_000.0, monotonic=clock)
    return limiter, store, clock


async def test_fail_closed_refuses_with_a_retry_hint() -> None:
    limiter, store, _ = make(FailurePolicy.CLOSED)
    store.down = True
    with pytest.raises(LimiterUnavailable) as caught:
        await limiter.acquire("t", LIMITS, "r1", 10)
    assert caught.value.retry_after_s == 1.0


async def test_fail_open_serves_locally_with_the_same_limits_then_charges_the_store() -> None:
    limiter, store, clock = make(FailurePolicy.OPEN)
    store.down = True
    served = await limiter.acquire("t", LIMITS, "r1", 100)
    assert served.decision.admitted and served.local
    # The local fallback enforces the tenant's limits too.
    assert not (await limiter.acquire("t", LIMITS, "big", 6000)).decision.admitted
    await limiter.release(served, 70)
    assert limiter.pending == 1  # the charge waits for the store
    store.down = False
    clock.now += 10  # past the pause after the failure
    assert await limiter.flush() == 1
    after = await store.acquire("t", LIMITS, "probe", 1, "202511", 60)
    # 6000 - 70 charged, then - 1; refill over 10 s adds what the charge consumed at most.
    assert after.tokens.remaining == 5929
    assert await limiter.flush() == 0


async def test_a_failure_pauses_the_store_so_an_outage_costs_one_timeout() -> None:
    limiter, store, clock = make(FailurePolicy.OPEN)
    store.down = True
    for i in range(5):
        await limiter.acquire("t", LIMITS, f"r{i}", 1)
    assert store.refused == 1  # only the first call tried the store
    clock.now += 1
    store.down = False
    assert not (await limiter.acquire("t", LIMITS, "back", 1)).local


async def test_a_release_the_store_cannot_take_is_retried_not_lost() -> None:
    limiter, store, clock = make(FailurePolicy.OPEN)
    admitted = await limiter.acquire("t", LIMITS, "r1", 1000)
    assert not admitted.local
    store.down = True
    await limiter.release(admitted, 100)  # refund 900 later
    assert limiter.pending == 1
    store.down = False
    clock.now += 1
    assert await limiter.flush() == 1
    assert (await store.acquire("t", LIMITS, "p", 1, "m", 60)).tokens.remaining >= 5899


async def test_the_retry_buffer_is_bounded() -> None:
    clock = FakeClock()
    store = FlakyStore(clock)
    limiter = Limiter(store, FailurePolicy.OPEN, pending_max=3, monotonic=clock)
    store.down = True
    for i in range(5):
        r = await limiter.acquire("t", LIMITS, f"r{i}", 1)
        await limiter.release(r, 1)
    assert limiter.pending == 3


async def test_renew_extends_only_requests_in_flight() -> None:
    limiter, store, clock = make(FailurePolicy.OPEN)
    limiter.lease_s = 30
    keep = await limiter.acquire("t", LIMITS, "keep", 1)
    done = await limiter.acquire("t", LIMITS, "done", 1)
    await limiter.release(done, 1)
    clock.now += 20
    await limiter.renew()
    clock.now += 20
    state = store._tenants["t"]
    assert list(state.leases) == ["keep"] and state.leases["keep"] > clock.now
    assert keep.decision.in_flight == 1


def test_latency_stats() -> None:
    from gateway.limits.limiter import LatencyStats

    stats = LatencyStats()
    for ms in range(1, 101):
        stats.add(ms / 1000)
    summary = stats.summary()
    assert summary["count"] == 100 and summary["p50_ms"] == pytest.approx(51)
    assert summary["p99_ms"] == pytest.approx(100)


async def test_a_crashed_replicas_concurrency_slot_comes_back_within_the_default_lease() -> None:
    lease_s = TenancyOptions(tenants_file=Path("unused")).lease_s
    assert lease_s <= 15  # a tenant at its limit waits at most this long after a crash
    clock = FakeClock()
    store = InMemoryLimitStore(clock)
    limits = TenantLimits(requests_per_minute=100, tokens_per_minute=10_000, max_concurrent=1)
    assert (
        await store.acquire("t", limits, "dead", 1, "202612", lease_s)
    ).admitted  # never released
    refused = await store.acquire("t", limits, "next", 1, "202612", lease_s)
    assert refused.violations == (CONCURRENCY,)
    clock.now += lease_s + 0.01
    assert (await store.acquire("t", limits, "next", 1, "202612", lease_s)).admitted
