"""The in-memory LimitStore: one process, same semantics as the Redis store."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.limits import bucket
from gateway.limits.bucket import BucketState
from gateway.limits.ports import (
    CONCURRENCY,
    MONTHLY,
    REQUESTS,
    TOKENS,
    TOO_LARGE,
    BucketView,
    Decision,
    TenantLimits,
    retry_hint,
)


@dataclass
class _TenantState:
    requests: BucketState | None = None
    tokens: BucketState | None = None
    leases: dict[str, float] = field(default_factory=dict)  # reservation -> expiry
    reserved: dict[str, int] = field(default_factory=dict)  # reservation -> tokens
    months: dict[str, int] = field(default_factory=dict)
    charges: set[str] = field(default_factory=set)


def view(limit: int, spec: bucket.BucketSpec, level: float) -> BucketView:
    """The client-facing figures of a bucket at ``level``."""
    return BucketView(limit, max(0, math.floor(level)), bucket.reset_after(spec, level))


class InMemoryLimitStore:
    """Buckets and leases in a dict, on a monotonic clock (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tenants: dict[str, _TenantState] = {}

    def _state(self, tenant: str) -> _TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _TenantState()
        return state

    async def acquire(
        self,
        tenant: str,
        limits: TenantLimits,
        reservation: str,
        tokens: int,
        month: str,
        lease_s: float,
    ) -> Decision:
        """Admit all or nothing; see LimitStore."""
        now = self._clock()
        state = self._state(tenant)
        for rid in [r for r, expiry in state.leases.items() if expiry <= now]:
            del state.leases[rid]
            state.reserved.pop(rid, None)
        rspec, tspec = limits.requests, limits.tokens
        rstate = state.requests or bucket.full(rspec, now)
        tstate = state.tokens or bucket.full(tspec, now)
        rlevel = bucket.level_at(rspec, rstate, now)
        tlevel = bucket.level_at(tspec, tstate, now)
        used = state.months.get(month, 0)
        violations: list[str] = []
        wait = 0.0
        if rlevel < 1:
            violations.append(REQUESTS)
            wait = max(wait, bucket.wait_for(rspec, rlevel, 1))
        if tokens > tspec.capacity:
            violations.append(TOO_LARGE)
            wait = math.inf
        elif tlevel < tokens:
            violations.append(TOKENS)
            wait = max(wait, bucket.wait_for(tspec, tlevel, tokens))
        if len(state.leases) >= limits.max_concurrent:
            violations.append(CONCURRENCY)
            wait = max(wait, 1.0)
        if limits.monthly_tokens is not None and used + tokens > limits.monthly_tokens:
            violations.append(MONTHLY)
            wait = math.inf
        if not violations:
            rlevel -= 1
            tlevel -= tokens
            state.requests = BucketState(rlevel, now)
            state.tokens = BucketState(tlevel, now)
            state.leases[reservation] = now + lease_s
            state.reserved[reservation] = tokens
            state.months[month] = used + tokens
        return Decision(
            admitted=not violations,
            violations=tuple(violations),
            retry_after_s=retry_hint(wait) if violations else None,
            requests=view(limits.requests_per_minute, rspec, rlevel),
            tokens=view(limits.tokens_per_minute, tspec, tlevel),
            in_flight=len(state.leases),
            month_used=state.months.get(month, 0),
        )

    async def release(
        self, tenant: str, limits: TenantLimits, reservation: str, actual_tokens: int, month: str
    ) -> int | None:
        """See LimitStore.release."""
        state = self._state(tenant)
        state.leases.pop(reservation, None)
        reserved = state.reserved.pop(reservation, None)
        if reserved is None:
            return None
        delta = reserved - actual_tokens
        if delta:
            now = self._clock()
            spec = limits.tokens
            state.tokens = bucket.adjust(spec, state.tokens or bucket.full(spec, now), delta, now)
            if month in state.months:
                state.months[month] = max(0, state.months[month] - delta)
        return delta

    async def charge(
        self,
        tenant: str,
        limits: TenantLimits,
        charge_id: str,
        requests: int,
        tokens: int,
        month: str,
    ) -> None:
        """See LimitStore.charge."""
        state = self._state(tenant)
        if charge_id in state.charges:
            return
        state.charges.add(charge_id)
        now = self._clock()
        rspec, tspec = limits.requests, limits.tokens
        state.requests = bucket.adjust(
            rspec, state.requests or bucket.full(rspec, now), -requests, now
        )
        state.tokens = bucket.adjust(tspec, state.tokens or bucket.full(tspec, now), -tokens, now)
        state.months[month] = state.months.get(month, 0) + tokens

    async def renew(self, tenant: str, reservations: Sequence[str], lease_s: float) -> None:
        """See LimitStore.renew."""
        state = self._state(tenant)
        expiry = self._clock() + lease_s
        for rid in reservations:
            if rid in state.leases:
                state.leases[rid] = expiry

    async def close(self) -> None:
        """Nothing to release."""
