"""A circuit breaker per endpoint: a pure state machine over an injected clock.

closed --(N consecutive failures, or failure rate >= R over the last W
seconds with at least M calls)--> open --(cooldown)--> half-open --(P probe
successes)--> closed; any failure while half-open --> open again. While
half-open at most P probe requests are in flight at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Thresholds of a breaker (defaults documented in ARCHITECTURE.md)."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window_s: float = 10.0
    min_calls_in_window: int = 20
    cooldown_s: float = 5.0
    half_open_probes: int = 2


class CircuitBreaker:
    """Tracks one endpoint's recent outcomes and says whether to send it traffic."""

    _BUCKETS = 10  # the rate window is kept as 10 rolling buckets

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._bucket_width = policy.window_s / self._BUCKETS
        self._buckets: list[list[float]] = []  # [bucket start, calls, failures]

    def allow(self) -> bool:
        """May a request go to this endpoint now? Reserves a probe when half-open."""
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.policy.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probes_in_flight = 0
            self._probe_successes = 0
        if self.state is BreakerState.HALF_OPEN:
            if self._probes_in_flight >= self.policy.half_open_probes:
                return False
            self._probes_in_flight += 1
        return True

    def would_allow(self) -> bool:
        """Like allow() but reserves nothing: for choosing among endpoints."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return self._clock() - self._opened_at >= self.policy.cooldown_s
        return self._probes_in_flight < self.policy.half_open_probes

    def record_success(self) -> None:
        """A request to the endpoint succeeded (its first token arrived, or it finished)."""
        self._count(failed=False)
        self._consecutive = 0
        if self.state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            self._probe_successes += 1
            if self._probe_successes >= self.policy.half_open_probes:
                self.state = BreakerState.CLOSED
                self._buckets.clear()

    def record_failure(self) -> None:
        """A request to the endpoint failed or timed out."""
        self._count(failed=True)
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self._should_open():
            self._open()

    def release_probe(self) -> None:
        """A half-open probe ended without a verdict (the client cancelled)."""
        if self.state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def trip(self) -> None:
        """Open now (the endpoint was found down by an active health check)."""
        if self.state is not BreakerState.OPEN:
            self._open()

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._consecutive = 0

    def _should_open(self) -> bool:
        policy = self.policy
        if self._consecutive >= policy.consecutive_failures:
            return True
        calls, failures = self._window_counts()
        return calls >= policy.min_calls_in_window and failures / calls >= policy.failure_rate

    def _count(self, failed: bool) -> None:
        now = self._clock()
        buckets = self._buckets
        if not buckets or now - buckets[-1][0] >= self._bucket_width:
            buckets.append([now, 0.0, 0.0])
            cutoff = now - self.policy.window_s
            while buckets and buckets[0][0] < cutoff:
                buckets.pop(0)
        buckets[-1][1] += 1
        if failed:
            buckets[-1][2] += 1

    def _window_counts(self) -> tuple[float, float]:
        cutoff = self._clock() - self.policy.window_s
        calls = failures = 0.0
        for start, c, f in self._buckets:
            if start >= cutoff:
                calls += c
                failures += f
        return calls, failures
