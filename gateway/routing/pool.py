"""A pool of replicas serving one model: choose an endpoint with the model's
load-balancing policy, reserve its slot, bound in-flight requests per
endpoint, and queue fairly when every endpoint is full."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence

from gateway.routing.breaker import BreakerPolicy, CircuitBreaker
from gateway.routing.endpoint import Endpoint
from gateway.routing.fair_queue import FairQueue
from gateway.routing.policies import LoadBalancingPolicy, PolicySettings, make_policy
from gateway.routing.policies.base import NO_KEY, RequestKey

log = logging.getLogger("llmgw.gateway.routing")


class PoolUnavailable(Exception):
    """No endpoint of the pool is usable (all unhealthy or open-circuited)."""


class PoolSaturated(Exception):
    """Every usable endpoint stayed full for the whole queue timeout."""


class EndpointPool:
    """Replicas of one model.

    ``acquire`` is two steps: the policy *chooses* among usable endpoints
    with room (``choose``), then the pool *reserves* the choice (``reserve``:
    a half-open breaker's probe slot and the in-flight count). When every
    usable endpoint is full the caller waits in a FairQueue; a released
    slot is handed straight to the next waiter.

    **Panic mode** (as Envoy's): when fewer than ``panic_threshold`` percent
    of the endpoints pass their active health checks, the health verdict is
    ignored and traffic spreads over every endpoint whose breaker allows it.
    Health checks that time out on an overloaded machine would otherwise
    eject a working pool and refuse everything; real failures still open
    the breakers, which panic mode keeps.

    The endpoint list can change while requests are in flight
    (``set_addresses``): a removed endpoint is *draining*, no longer chosen,
    its in-flight streams finish, and ``reap`` hands it back once idle.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        breaker_policy: BreakerPolicy | None = None,
        max_inflight: int = 256,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        policy: LoadBalancingPolicy | None = None,
        panic_threshold: float = 50.0,
        policy_name: str = "least_load",
    ) -> None:
        self._clock = clock or time.monotonic
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self.max_inflight = max_inflight
        self.panic_threshold = panic_threshold
        self.policy: LoadBalancingPolicy = policy or make_policy(
            policy_name, PolicySettings(rng=rng or random.Random())
        )
        self.policy_name = policy_name  # as the routing file names it (admin, logs)
        self.endpoints: list[Endpoint] = []
        self.draining: list[Endpoint] = []
        self.queue: FairQueue[Endpoint] = FairQueue()
        self._panicking = False
        self.set_addresses(addresses)

    # -- membership -------------------------------------------------------

    def set_addresses(self, addresses: Sequence[str]) -> tuple[list[Endpoint], list[Endpoint]]:
        """Make ``addresses`` the pool's endpoints, keeping the state of those
        that stay; return (added, removed). Removed ones drain."""
        wanted = list(dict.fromkeys(addresses))
        current = {e.address: e for e in self.endpoints}
        added: list[Endpoint] = []
        kept: list[Endpoint] = []
        for address in wanted:
            endpoint = current.pop(address, None)
            if endpoint is None:
                revived = next((e for e in self.draining if e.address == address), None)
                if revived is not None:  # back before it drained: keep its state
                    self.draining.remove(revived)
                    revived.draining = False
                    endpoint = revived
                else:
                    endpoint = Endpoint(
                        address,
                        CircuitBreaker(self.breaker_policy, self._clock),
                        self.max_inflight,
                    )
                added.append(endpoint)
            kept.append(endpoint)
        removed = list(current.values())
        for endpoint in removed:
            endpoint.draining = True
        self.draining.extend(removed)
        self.endpoints = kept
        return added, removed

    def reap(self) -> list[Endpoint]:
        """Draining endpoints with nothing in flight any more (forgotten here)."""
        idle = [e for e in self.draining if e.outstanding <= 0]
        if idle:
            self.draining = [e for e in self.draining if e.outstanding > 0]
        return idle

    # -- state ------------------------------------------------------------

    def usable(self) -> bool:
        """Some endpoint could take a request now (in panic mode: ignoring health)."""
        return any(self._eligible(e) for e in self.endpoints)

    def panicking(self) -> bool:
        """Fewer than ``panic_threshold`` % of the endpoints pass health checks."""
        endpoints = self.endpoints
        if not endpoints or self.panic_threshold <= 0:
            panic = False
        else:
            healthy = sum(1 for e in endpoints if e.healthy)
            panic = healthy * 100 < self.panic_threshold * len(endpoints)
        if panic != self._panicking:
            self._panicking = panic
            if panic:
                log.warning(
                    "panic routing: fewer than %g%% of %d endpoints are healthy; "
                    "spreading over all of them",
                    self.panic_threshold,
                    len(endpoints),
                )
            else:
                log.info("panic routing over: enough endpoints are healthy again")
        return panic

    def _eligible(self, endpoint: Endpoint, panic: bool | None = None) -> bool:
        if panic is None:
            panic = self.panicking()
        if panic:
            return not endpoint.draining and endpoint.breaker.would_allow()
        return endpoint.usable()

    # -- choose, then reserve ---------------------------------------------

    def choose(
        self, key: RequestKey = NO_KEY, exclude: Collection[Endpoint] = ()
    ) -> Endpoint | None:
        """The endpoint the policy picks among those usable with room; None if none."""
        return self._choose_and_reserve(key, exclude, reserve=False)

    def reserve(self, endpoint: Endpoint) -> bool:
        """Take a slot on ``endpoint``: a probe if its breaker is half-open, and
        one in-flight request. False if the breaker refuses (probes taken)."""
        if not endpoint.breaker.allow():
            return False
        endpoint.outstanding += 1
        return True

    def _choose_and_reserve(
        self, key: RequestKey, exclude: Collection[Endpoint], reserve: bool = True
    ) -> Endpoint | None:
        panic = self.panicking()
        candidates = [
            e
            for e in self.endpoints
            if e not in exclude and self._eligible(e, panic) and e.has_room()
        ]
        while candidates:
            chosen = self.policy.choose(candidates, self.endpoints, key)
            if not reserve or self.reserve(chosen):
                return chosen
            candidates.remove(chosen)  # its half-open probes are all taken: try the others
        return None

    async def acquire(
        self,
        *,
        key: RequestKey = NO_KEY,
        tenant: str = "",
        priority: int = 0,
        timeout_s: float,
        exclude: Collection[Endpoint] = (),
    ) -> Endpoint:
        """Choose and reserve a slot; raise PoolUnavailable or PoolSaturated."""
        panic = self.panicking()
        if not any(self._eligible(e, panic) for e in self.endpoints if e not in exclude):
            raise PoolUnavailable()
        # No barging: while others wait, a newcomer queues behind them.
        if not self.queue.depth:
            chosen = self._choose_and_reserve(key, exclude)
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
                if waiter.done() and not waiter.cancelled():
                    # Handed over in the same loop iteration as the deadline: pass it on.
                    self.release(waiter.result())
                raise PoolSaturated() from None
            except asyncio.CancelledError:
                self.queue.forget(waiter)
                if waiter.done() and not waiter.cancelled():
                    self.release(waiter.result())  # handed over just as we left
                raise
            if endpoint not in exclude and self._eligible(endpoint) and endpoint.breaker.allow():
                return endpoint
            # Not a slot we can use (a retry avoids it, or it went bad): pass it on.
            self.release(endpoint)
            chosen = self._choose_and_reserve(key, exclude)
            if chosen is not None:
                return chosen

    def release(self, endpoint: Endpoint) -> None:
        """Give the slot back: to the next waiter if any, else free it."""
        if self._eligible(endpoint) and self.queue.hand_over(endpoint):
            return
        endpoint.outstanding -= 1
        # The freed endpoint is unusable, but a waiter may fit on another one.
        if self.queue.depth:
            other = self._choose_and_reserve(NO_KEY, ())
            if other is not None and not self.queue.hand_over(other):
                other.outstanding -= 1
                other.breaker.release_probe()
