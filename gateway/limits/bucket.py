"""Token bucket arithmetic, pure and clock-free (the caller passes ``now``).

A bucket holds at most ``capacity`` units and refills at ``rate`` units per
second. Its stored state is (level, updated_at); the level at any later time
is computed, never ticked. A level may be negative: reconciling a request
that used more than it reserved charges the difference, and the debt is
paid back by refill before anything else is admitted.

The Redis Lua scripts (``gateway.adapters.redis_limits``) implement these
same formulas on the server's clock; the in-memory store calls them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """Capacity (the burst) and refill rate of one bucket."""

    capacity: float
    rate_per_s: float

    @classmethod
    def per_minute(cls, limit: int, burst: int | None = None) -> BucketSpec:
        """``limit`` units a minute, bursting up to ``burst`` (default: ``limit``)."""
        return cls(capacity=float(burst if burst is not None else limit), rate_per_s=limit / 60.0)


@dataclass(frozen=True, slots=True)
class BucketState:
    """Level at ``updated_at`` (seconds, any monotonic origin)."""

    level: float
    updated_at: float


def full(spec: BucketSpec, now: float) -> BucketState:
    """A bucket never used: at capacity."""
    return BucketState(spec.capacity, now)


def level_at(spec: BucketSpec, state: BucketState, now: float) -> float:
    """The level after refilling from ``state.updated_at`` to ``now`` (capped at capacity)."""
    elapsed = max(0.0, now - state.updated_at)
    return min(spec.capacity, state.level + elapsed * spec.rate_per_s)


def wait_for(spec: BucketSpec, level: float, amount: float) -> float:
    """Seconds until ``level`` has refilled to ``amount`` (0 if it already has).

    Infinite when ``amount`` exceeds the capacity: such a request never fits.
    """
    if amount > spec.capacity:
        return math.inf
    if level >= amount:
        return 0.0
    if spec.rate_per_s <= 0:
        return math.inf
    return (amount - level) / spec.rate_per_s


def reset_after(spec: BucketSpec, level: float) -> float:
    """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
    if level >= spec.capacity or spec.rate_per_s <= 0:
        return 0.0
    return (spec.capacity - level) / spec.rate_per_s


def take(spec: BucketSpec, state: BucketState, amount: float, now: float) -> BucketState | None:
    """The state after taking ``amount`` at ``now``, or None if it does not fit yet."""
    level = level_at(spec, state, now)
    if level < amount:
        return None
    return BucketState(level - amount, now)


def adjust(spec: BucketSpec, state: BucketState, delta: float, now: float) -> BucketState:
    """Give back (``delta`` > 0) or charge (``delta`` < 0) units; a charge may go below zero."""
    level = level_at(spec, state, now)
    return BucketState(min(spec.capacity, level + delta), now)
