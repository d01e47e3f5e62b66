"""What the limiter needs from a shared store, and the values it trades in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.limits.bucket import BucketSpec

# Names of the limits a decision can refuse on (also QuotaFailure subjects' suffixes).
REQUESTS = "requests"
TOKENS = "tokens"
CONCURRENCY = "concurrency"
MONTHLY = "monthly_tokens"
TOO_LARGE = "request_too_large"


class StoreUnavailable(Exception):
    """The shared store could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One tenant's limits. Bursts default to one minute's worth."""

    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int
    requests_burst: int | None = None
    tokens_burst: int | None = None
    monthly_tokens: int | None = None

    @property
    def requests(self) -> BucketSpec:
        """The requests bucket."""
        return BucketSpec.per_minute(self.requests_per_minute, self.requests_burst)

    @property
    def tokens(self) -> BucketSpec:
        """The tokens bucket (prompt + completion)."""
        return BucketSpec.per_minute(self.tokens_per_minute, self.tokens_burst)


@dataclass(frozen=True, slots=True)
class BucketView:
    """What a client is told about one bucket (OpenAI's x-ratelimit-* trio)."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one admission: admitted or not, why, and the buckets after it."""

    admitted: bool
    violations: tuple[str, ...]
    retry_after_s: float | None
    requests: BucketView
    tokens: BucketView
    in_flight: int = 0
    month_used: int = 0


def retry_hint(wait_s: float) -> float | None:
    """A finite wait, rounded up to milliseconds; None when waiting cannot help."""
    if math.isinf(wait_s):
        return None
    return math.ceil(max(wait_s, 0.001) * 1000) / 1000


class LimitStore(Protocol):
    """Atomic admission against one tenant's buckets, concurrency leases and month counter.

    Implementations: ``InMemoryLimitStore`` (one process) and
    ``RedisLimitStore`` (shared by every replica, one Lua script per call).
    Every method raises StoreUnavailable when the store cannot be reached.
    """

    async def acquire(
        self,
        tenant: str,
        limits: TenantLimits,
        reservation: str,
        tokens: int,
        month: str,
        lease_s: float,
    ) -> Decision:
        """Take one request and ``tokens`` tokens and a concurrency lease, all or nothing."""
        ...

    async def release(
        self, tenant: str, limits: TenantLimits, reservation: str, actual_tokens: int, month: str
    ) -> int | None:
        """End a reservation: free its lease and refund (or charge) reserved - actual.

        Idempotent: a reservation already released (or expired) changes
        nothing and returns None; otherwise returns the tokens given back.
        """
        ...

    async def charge(
        self,
        tenant: str,
        limits: TenantLimits,
        charge_id: str,
        requests: int,
        tokens: int,
        month: str,
    ) -> None:
        """Charge usage admitted elsewhere (fail-open); idempotent per ``charge_id``."""
        ...

    async def renew(self, tenant: str, reservations: Sequence[str], lease_s: float) -> None:
        """Extend the leases of reservations still in flight."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
