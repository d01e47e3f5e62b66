"""Background health checks and load reports for every endpoint.

Nothing here runs on the request path: each endpoint gets one task that,
every ``interval_s``, asks the sidecar's grpc.health.v1 Check and its
GetLoad, and updates the Endpoint the router reads. An endpoint is ejected
after ``unhealthy_threshold`` failed checks in a row and re-admitted after
``healthy_threshold`` good ones; its circuit breaker (fed by real traffic)
then decides how fast traffic returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.config import HealthConfig
from gateway.routing.endpoint import Endpoint, LoadSnapshot

log = logging.getLogger("llmgw.gateway.health")


class Prober(Protocol):
    """What the monitor needs from the backend client."""

    async def is_serving(self, address: str, timeout_s: float) -> bool:
        """Health check."""
        ...

    async def load(self, address: str, timeout_s: float) -> LoadSnapshot | None:
        """Load report."""
        ...


class EndpointMonitor:
    """Keeps every endpoint's health and load fresh."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        prober: Prober,
        config: HealthConfig,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        self._endpoints = list(endpoints)
        self._after_round = after_round
        self._prober = prober
        self._config = config
        self._tasks: list[asyncio.Task[None]] = []
        self._watches: dict[Endpoint, asyncio.Task[None]] = {}
        self._started = False

    def start(self) -> None:
        """Start one checking task per endpoint (and the exporter, if any)."""
        self._started = True
        self.add(self._endpoints)
        if self._after_round is not None:
            self._tasks.append(asyncio.create_task(self._export(self._after_round)))

    def add(self, endpoints: Iterable[Endpoint]) -> None:
        """Check these endpoints too (discovery found them)."""
        for endpoint in endpoints:
            if endpoint not in self._endpoints:
                self._endpoints.append(endpoint)
            if self._started and endpoint not in self._watches:
                self._watches[endpoint] = asyncio.create_task(self._watch(endpoint))

    def remove(self, endpoints: Iterable[Endpoint]) -> None:
        """Stop checking these endpoints (they left their pool and drain)."""
        for endpoint in endpoints:
            if endpoint in self._endpoints:
                self._endpoints.remove(endpoint)
            task = self._watches.pop(endpoint, None)
            if task is not None:
                task.cancel()

    async def _export(self, export: Callable[[], None]) -> None:
        while True:
            export()
            await asyncio.sleep(self._config.interval_s)

    async def stop(self) -> None:
        """Stop checking."""
        tasks = [*self._tasks, *self._watches.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()

    async def _watch(self, endpoint: Endpoint) -> None:
        config = self._config
        good = bad = 0
        while True:
            serving, load = await asyncio.gather(
                self._prober.is_serving(endpoint.address, config.timeout_s),
                self._prober.load(endpoint.address, config.timeout_s),
            )
            if load is not None:
                endpoint.load = load
            if serving:
                good, bad = good + 1, 0
                if not endpoint.healthy and good >= config.healthy_threshold:
                    endpoint.healthy = True
                    log.info("endpoint %s is healthy again", endpoint.address)
            else:
                good, bad = 0, bad + 1
                if endpoint.healthy and bad >= config.unhealthy_threshold:
                    endpoint.healthy = False
                    log.warning(
                        "endpoint %s failed %d health checks: ejected", endpoint.address, bad
                    )
            await asyncio.sleep(config.interval_s)
