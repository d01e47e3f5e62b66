"""A pool of replicas serving one model: pick by load, bound in-flight
requests per endpoint, and queue fairly when every endpoint is full."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Sequence

from gateway.routing.breaker import BreakerPolicy, CircuitBreaker
from gateway.routing.endpoint import Endpoint
from gateway.routing.fair_queue import FairQueue


class PoolUnavailable(Exception):
    """No endpoint of the pool is usable (all unhealthy or open-circuited)."""


class PoolSaturated(Exception):
    """Every usable endpoint stayed full for the whole queue timeout."""


class EndpointPool:
    """Replicas of one model.

    ``acquire`` picks among usable endpoints with room by power of two
    random choices on their load score (our in-flight requests plus the
    engine's reported queue), so neither one gateway process nor many herd
    onto one replica. When all usable endpoints are full the caller waits in
    a FairQueue; a released slot is handed straight to the next waiter.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        breaker_policy: BreakerPolicy | None = None,
        max_inflight: int = 256,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("a pool needs at least one endpoint")
        loop_clock = clock or time.monotonic
        policy = breaker_policy or BreakerPolicy()
        self.endpoints = [
            Endpoint(a, CircuitBreaker(policy, loop_clock), max_inflight) for a in addresses
        ]
        self._rng = rng or random.Random()
        self.queue: FairQueue[Endpoint] = FairQueue()

    def usable(self) -> bool:
        """Some endpoint is healthy and not open-circuited."""
        return any(e.usable() for e in self.endpoints)

    def _pick(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        candidates = [e for e in self.endpoints if e not in exclude and e.usable() and e.has_room()]
        while candidates:
            if len(candidates) == 1:
                chosen = candidates[0]
            else:
                a, b = self._rng.sample(candidates, 2)
                chosen = a if a.score() <= b.score() else b
            if chosen.breaker.allow():  # reserves a probe slot when half-open
                chosen.outstanding += 1
                return chosen
            candidates.remove(chosen)  # its half-open probes are all taken: try the others
        return None

    async def acquire(
        self,
        *,
        tenant: str = "",
        priority: int = 0,
        timeout_s: float,
        exclude: Collection[Endpoint] = (),
    ) -> Endpoint:
        """Reserve a slot on an endpoint; raise PoolUnavailable or PoolSaturated."""
        if not any(e.usable() for e in self.endpoints if e not in exclude):
            raise PoolUnavailable()
        # No barging: while others wait, a newcomer queues behind them.
        if not self.queue.depth:
            chosen = self._pick(exclude)
            if chosen is not None:
                return chosen
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            waiter = self.queue.push(tenant, priority)
            try:
                async with asyncio.timeout_at(deadline):
                    endpoint = await waiter
            except TimeoutError:
                self.queue.forget(waiter)
                raise PoolSaturated() from None
            except asyncio.CancelledError:
                self.queue.forget(waiter)
                if waiter.done() and not waiter.cancelled():
                    self.release(waiter.result())  # handed over just as we left
                raise
            if endpoint not in exclude and endpoint.usable() and endpoint.breaker.allow():
                return endpoint
            # Not a slot we can use (a retry avoids it, or it went bad): pass it on.
            self.release(endpoint)
            chosen = self._pick(exclude)
            if chosen is not None:
                return chosen

    def release(self, endpoint: Endpoint) -> None:
        """Give the slot back: to the next waiter if any, else free it."""
        if endpoint.usable() and self.queue.hand_over(endpoint):
            return
        endpoint.outstanding -= 1
        # The freed endpoint is unusable, but a waiter may fit on another one.
        if self.queue.depth:
            other = self._pick(())
            if other is not None and not self.queue.hand_over(other):
                other.outstanding -= 1
                other.breaker.release_probe()
