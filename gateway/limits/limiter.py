"""The limiter: admission against a shared store, with a policy for when it is down.

- ``acquire`` takes one request, the reserved tokens and a concurrency lease
  in one atomic store call, and returns the decision with the buckets' state
  (for the ``x-ratelimit-*`` headers).
- ``release`` reconciles: frees the lease and refunds (or charges) the
  difference between reserved and real tokens. It never raises; a release
  the store cannot take now is queued and retried.
- Leases of requests still running are renewed in the background, so a
  lease can be short (a crashed replica's leases lapse within ``lease_s``)
  while a ten-minute stream keeps its slot.
- When the store is unreachable: ``fail-open`` admits against a local
  in-memory store with the same limits (per process) and charges what was
  used to the shared store once it is back; ``fail-closed`` refuses with
  ``LimiterUnavailable`` (503 with Retry-After). After a failure the store
  is not tried again for a short, growing pause, so an outage costs one
  timeout, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from gateway.errors import LimiterUnavailable
from gateway.limits.memory import InMemoryLimitStore
from gateway.limits.ports import Decision, LimitStore, StoreUnavailable, TenantLimits

log = logging.getLogger("llmgw.gateway.limits")


class FailurePolicy(enum.Enum):
    """What admission does when the shared store cannot be reached."""

    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admission: what was reserved, where, and the decision taken."""

    id: str
    tenant: str
    limits: TenantLimits
    tokens: int
    month: str
    decision: Decision
    local: bool = False  # admitted by the local fallback while the shared store was down


def month_of(unix_s: float) -> str:
    """Calendar month (UTC) of a timestamp, ``YYYYMM``."""
    return time.strftime("%Y%m", time.gmtime(unix_s))


class LatencyStats:
    """Admission latencies of this process (a bounded sample), for p50/p99."""

    def __init__(self, keep: int = 200_000) -> None:
        self._samples: deque[float] = deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        """Record one admission."""
        self._samples.append(seconds)

    def summary(self) -> dict[str, float]:
        """Count, p50 and p99 in milliseconds."""
        samples = sorted(self._samples)
        if not samples:
            return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0}

        def pct(p: float) -> float:
            return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000

        return {"count": len(samples), "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


class Limiter:
    """Admits and reconciles requests against a LimitStore (see the module doc)."""

    def __init__(
        self,
        store: LimitStore,
        policy: FailurePolicy = FailurePolicy.OPEN,
        lease_s: float = 15.0,
        pending_max: int = 10_000,
        unavailable_retry_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        local: LimitStore | None = None,
    ) -> None:
        self._store = store
        self.policy = policy
        self.lease_s = lease_s
        self._clock = clock
        self._monotonic = monotonic
        self._local = local if local is not None else InMemoryLimitStore(monotonic)
        self._unavailable_retry_s = unavailable_retry_s
        self._pending: deque[tuple[str, Callable[[], Awaitable[object]]]] = deque()
        self._pending_max = pending_max
        self._dropped = 0
        self._in_flight: dict[str, set[str]] = {}
        self._down_until = 0.0
        self._backoff_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = LatencyStats()
        # Requests admitted against the local fallback while the store was down
        # (read by telemetry: "serving from in-memory limits").
        self.local_admissions = 0

    @property
    def store_down(self) -> bool:
        """Whether the shared store is being skipped after a failure."""
        return self._monotonic() < self._down_until

    @property
    def pending(self) -> int:
        """Store writes waiting to be retried."""
        return len(self._pending)

    def start(self) -> None:
        """Start lease renewal and retries of queued writes."""
        if self._task is None:
            self._task = asyncio.create_task(self._background())

    async def close(self) -> None:
        """Stop the background work, try the queued writes once more, close the store."""
        if self._task is not None:
            self._closed = True  # the loop also stops by itself: see Meter.close
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 2.0)
        summary = self.stats.summary()
        if summary["count"]:
            log.info(
                "admission latency: %d admissions, p50 %.3f ms, p99 %.3f ms",
                summary["count"],
                summary["p50_ms"],
                summary["p99_ms"],
            )
        if self._pending:
            log.warning("%d rate-limit store writes not applied at shutdown", len(self._pending))
        await self._store.close()

    def _failed(self, error: Exception) -> None:
        if not self.store_down:
            self._backoff_s = min(5.0, max(0.25, self._backoff_s * 2))
            self._down_until = self._monotonic() + self._backoff_s
            log.warning(
                "rate-limit store unreachable (%s); policy fail-%s for %.2fs",
                error,
                self.policy.value,
                self._backoff_s,
            )

    def _recovered(self) -> None:
        if self._backoff_s:
            log.info("rate-limit store reachable again")
        self._backoff_s = 0.0
        self._down_until = 0.0

    async def acquire(
        self, tenant: str, limits: TenantLimits, reservation: str, tokens: int
    ) -> Reservation:
        """Admit or refuse (``decision.admitted``); LimiterUnavailable when fail-closed and down."""
        started = self._monotonic()
        month = month_of(self._clock())
        if not self.store_down:
            # Shielded: a caller gone mid-call (after the store took the reservation)
            # leaves it to be given back, not held until its lease ends.
            taking = asyncio.ensure_future(
                self._store.acquire(tenant, limits, reservation, tokens, month, self.lease_s)
            )
            try:
                decision = await asyncio.shield(taking)
            except asyncio.CancelledError:
                taking.add_done_callback(
                    partial(self._give_back, tenant, limits, reservation, month)
                )
                raise
            except StoreUnavailable as error:
                self._failed(error)
            else:
                self._recovered()
                self.stats.add(self._monotonic() - started)
                if decision.admitted:
                    self._in_flight.setdefault(tenant, set()).add(reservation)
                return Reservation(reservation, tenant, limits, tokens, month, decision)
        if self.policy is FailurePolicy.CLOSED:
            raise LimiterUnavailable(
                "Rate limiting is temporarily unavailable. Please retry.",
                retry_after_s=self._unavailable_retry_s,
            )
        decision = await self._local.acquire(
            tenant, limits, reservation, tokens, month, self.lease_s
        )
        self.local_admissions += 1
        self.stats.add(self._monotonic() - started)
        return Reservation(reservation, tenant, limits, tokens, month, decision, local=True)

    def _give_back(
        self,
        tenant: str,
        limits: TenantLimits,
        reservation: str,
        month: str,
        taking: asyncio.Future[Decision],
    ) -> None:
        """Release (nothing used) what a cancelled acquire took, by the retried-writes path."""
        if taking.cancelled() or taking.exception() is not None or not taking.result().admitted:
            return
        self._enqueue(
            f"release {tenant}",
            lambda: self._store.release(tenant, limits, reservation, 0, month),
        )

    async def release(self, reservation: Reservation, actual_tokens: int) -> None:
        """Reconcile an admitted reservation with its real usage. Never raises."""
        r = reservation
        if r.local:
            await self._local.release(r.tenant, r.limits, r.id, actual_tokens, r.month)
            # Served while the shared store was down: charge it there once it is back.
            self._enqueue(
                f"charge {r.tenant}",
                lambda: self._store.charge(r.tenant, r.limits, r.id, 1, actual_tokens, r.month),
            )
            return
        leases = self._in_flight.get(r.tenant)
        if leases is not None:
            leases.discard(r.id)
            if not leases:
                del self._in_flight[r.tenant]

        def apply() -> Awaitable[object]:
            return self._store.release(r.tenant, r.limits, r.id, actual_tokens, r.month)

        if self.store_down:
            self._enqueue(f"release {r.tenant}", apply)
            return
        try:
            await apply()
        except StoreUnavailable as error:
            self._failed(error)
            self._enqueue(f"release {r.tenant}", apply)

    def _enqueue(self, what: str, op: Callable[[], Awaitable[object]]) -> None:
        if len(self._pending) >= self._pending_max:
            self._pending.popleft()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("rate-limit retry buffer full: %d writes dropped so far", self._dropped)
        self._pending.append((what, op))

    async def flush(self) -> int:
        """Apply queued writes while the store takes them; return how many were applied."""
        applied = 0
        while self._pending:
            _, op = self._pending[0]
            try:
                await op()
            except StoreUnavailable as error:
                self._failed(error)
                break
            self._pending.popleft()
            applied += 1
        if applied:
            self._recovered()
            log.info("reconciled %d rate-limit writes queued during an outage", applied)
        return applied

    async def renew(self) -> None:
        """Extend the leases of this process's requests in flight."""
        for tenant, leases in list(self._in_flight.items()):
            if leases:
                await self._store.renew(tenant, list(leases), self.lease_s)

    async def _background(self) -> None:
        renew_every = max(0.05, self.lease_s / 3)
        next_renew = self._monotonic() + renew_every
        while not self._closed:
            await asyncio.sleep(min(0.5, renew_every))
            try:
                if self._pending and not self.store_down:
                    await self.flush()
                if self._monotonic() >= next_renew and not self.store_down:
                    next_renew = self._monotonic() + renew_every
                    await self.renew()
            except StoreUnavailable as error:
                self._failed(error)
            except Exception:  # the loop must survive anything
                log.exception("rate-limit background work failed")
