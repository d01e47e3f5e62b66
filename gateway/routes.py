"""The routes in force: the routing file and DNS, applied to the running registry.

- **Discovery.** An endpoint given by host name is resolved at start and
  every ``discovery.interval_s``; each address becomes an endpoint of its
  own (channel, health checks, breaker). An address that disappears
  *drains*: no new requests, streams in flight finish, and its channel is
  closed once nothing uses it. A failed resolution keeps the addresses of
  the last good one (a DNS hiccup must not empty a pool).
- **Reload.** The routing file is polled (inode, size, mtime) and reloaded
  on SIGHUP, like the tenant file. A file that does not parse or validate
  is logged and the old routes keep serving. A valid one is applied in
  place (``routing.build.apply_config``): models, aliases, endpoints, limits,
  fallbacks and routing settings change; requests in flight are unaffected.
  ``resilience`` settings (timeouts, retries, health checks) are read at
  start only: a change there is logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.sighup import on_sighup
from gateway.adapters.backend_client import GrpcBackendClient
from gateway.adapters.monitor import EndpointMonitor
from gateway.adapters.resolver import Resolver, is_ip, join_host_port, split_host_port
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.routing.build import Applied, apply_config
from gateway.routing.endpoint import Endpoint
from gateway.routing.pool import EndpointPool
from gateway.routing.registry import ModelRegistry

log = logging.getLogger("llmgw.gateway.routes")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Routes:
    """Keeps the registry in step with the routing file and with DNS."""

    def __init__(
        self,
        registry: ModelRegistry,
        monitor: EndpointMonitor,
        backends: GrpcBackendClient,
        resolver: Resolver,
        path: Path | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.registry = registry
        self._monitor = monitor
        self._backends = backends
        self._resolver = resolver
        self.path = path
        self._poll_s = poll_s
        self.config: GatewayConfig | None = None
        self._signature = _signature(path) if path is not None else None
        self._last_good: dict[str, list[str]] = {}  # host name -> its last addresses
        self._draining: list[EndpointPool] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._unsubscribe: Callable[[], None] = lambda: None
        self._lock = asyncio.Lock()

    # -- resolution ---------------------------------------------------------

    async def _resolve_host(self, host: str) -> list[str]:
        try:
            addresses = await self._resolver.resolve(host)
        except OSError as error:
            addresses = []
            reason = str(error)
        else:
            reason = "no addresses"
        if addresses:
            if addresses != self._last_good.get(host):
                log.info("%s resolves to %s", host, ", ".join(addresses))
            self._last_good[host] = addresses
            return addresses
        kept = self._last_good.get(host, [])
        log.warning(
            "cannot resolve %s (%s); keeping %s", host, reason, ", ".join(kept) or "no endpoints"
        )
        return kept

    async def resolve(self, config: GatewayConfig) -> dict[str, list[str]]:
        """Model name -> endpoint addresses, every host name resolved."""
        names = {
            host
            for m in config.models
            for entry in m.endpoints
            if not is_ip(host := split_host_port(entry)[0])
        }
        hosts = list(names)
        resolved = await asyncio.gather(*(self._resolve_host(h) for h in hosts))
        ips = dict(zip(hosts, resolved, strict=True))
        table: dict[str, list[str]] = {}
        for m in config.models:
            addresses: list[str] = []
            for entry in m.endpoints:
                host, port = split_host_port(entry)
                if is_ip(host):
                    addresses.append(join_host_port(host, port))
                else:
                    addresses.extend(join_host_port(ip, port) for ip in ips[host])
            table[m.name] = list(dict.fromkeys(addresses))
        return table

    # -- applying -----------------------------------------------------------

    async def apply(self, config: GatewayConfig) -> Applied:
        """Resolve ``config``'s names and make the registry serve it."""
        async with self._lock:
            addresses = await self.resolve(config)
            applied = apply_config(self.registry, config, addresses)
            self.config = config
            self._monitor.add(applied.added)
            self._monitor.remove(applied.removed)
            self._draining.extend(applied.retired_pools)
            for endpoint in applied.added:
                log.info("endpoint %s joined", endpoint.address)
            for endpoint in applied.removed:
                log.info(
                    "endpoint %s left: draining %d in-flight requests",
                    endpoint.address,
                    endpoint.outstanding,
                )
            await self.reap()
            return applied

    async def refresh(self) -> None:
        """Re-resolve the current configuration's names (the discovery tick); apply
        only when an address changed."""
        config = self.config
        if config is None or all(
            is_ip(split_host_port(entry)[0]) for m in config.models for entry in m.endpoints
        ):
            return
        resolved = await self.resolve(config)
        current = {r.name: [e.address for e in r.pool.endpoints] for r in self.registry.routes}
        if resolved != current:
            await self.apply(config)

    def _pools(self) -> Iterable[EndpointPool]:
        yield from (route.pool for route in self.registry.routes)
        yield from self._draining

    async def reap(self) -> None:
        """Forget drained endpoints; close a channel once no endpoint uses its address."""
        reaped: list[Endpoint] = []
        for route in self.registry.routes:
            reaped.extend(route.pool.reap())
        for pool in list(self._draining):
            reaped.extend(pool.reap())
            if not pool.draining:
                self._draining.remove(pool)
        if not reaped:
            return
        in_use = {e.address for pool in self._pools() for e in (*pool.endpoints, *pool.draining)}
        for endpoint in reaped:
            log.info("endpoint %s drained", endpoint.address)
            if endpoint.address not in in_use:
                in_use.add(endpoint.address)  # close once, even if two pools had it
                await self._backends.forget(endpoint.address)

    # -- the routing file ---------------------------------------------------

    async def reload(self) -> bool:
        """Read the routing file again; a bad file is logged and changes nothing."""
        if self.path is None:
            return False
        signature = _signature(self.path)
        try:
            config = load_config(self.path)
        except ConfigError as error:
            self._signature = signature  # do not retry the same bad file every poll
            log.error("routing file rejected, still serving the previous routes: %s", error)
            return False
        self._signature = signature
        if self.config is not None and config.resilience != self.config.resilience:
            log.warning("routing file: resilience settings change only on restart")
        await self.apply(config)
        log.info(
            "routing file %s reloaded: %d models, %d endpoints",
            self.path,
            len(config.models),
            sum(len(r.pool.endpoints) for r in self.registry.routes),
        )
        return True

    def _reload_soon(self) -> None:
        self._tasks.append(asyncio.create_task(self.reload()))

    async def _watch_file(self) -> None:
        assert self.path is not None
        while True:
            await asyncio.sleep(self._poll_s)
            if _signature(self.path) != self._signature:
                await self.reload()

    async def _rediscover(self) -> None:
        while True:
            config = self.config
            interval = config.discovery.interval_s if config is not None else 5.0
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("re-resolving endpoints failed")

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self.reap()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start polling the file, re-resolving names, reaping drained endpoints; SIGHUP."""
        self._tasks += [
            asyncio.create_task(self._rediscover()),
            asyncio.create_task(self._reap_forever()),
        ]
        if self.path is not None:
            self._tasks.append(asyncio.create_task(self._watch_file()))
            self._unsubscribe = on_sighup(self._reload_soon)

    async def close(self) -> None:
        """Stop every background task."""
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
