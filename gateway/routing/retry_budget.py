"""A retry budget: retries may add at most a fixed fraction to the request rate.

Each request deposits ``ratio`` tokens; each retry withdraws one. A small
floor (``min_per_s`` tokens a second) lets a quiet gateway still retry.
During an outage every first attempt fails, so without a budget every
request would become ``max_attempts`` requests and multiply the load on the
replicas that are left; with it, the extra load is capped at ``ratio``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How retries before the first token behave."""

    max_attempts: int = 3
    budget_ratio: float = 0.2
    budget_min_per_s: float = 2.0
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25


class RetryBudget:
    """Token-bucket accounting of retries against requests."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._cap = max(10.0, policy.budget_min_per_s * 10)
        self._tokens = self._cap
        self._last = clock()

    def on_request(self) -> None:
        """Credit a first attempt."""
        self._refill()
        self._tokens = min(self._cap, self._tokens + self._policy.budget_ratio)

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(
            self._cap, self._tokens + (now - self._last) * self._policy.budget_min_per_s
        )
        self._last = now
