"""Builds tenancy for one gateway process: tenant file, limiter, meter, stores.

With a Redis URL, limits and metering use Redis (single server or Cluster)
and hold across every replica; without one, in-memory stores with the same
interface serve the single-process embedded default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.sighup import on_sighup
from gateway.config import GatewayConfig
from gateway.limits.limiter import FailurePolicy, Limiter
from gateway.limits.memory import InMemoryLimitStore
from gateway.limits.ports import LimitStore
from gateway.metering.memory import InMemoryUsageStore
from gateway.metering.meter import DropHook, Meter
from gateway.metering.ports import UsageStore
from gateway.metering.spool import UsageSpool
from gateway.routing.registry import ModelRegistry
from gateway.settings import GatewaySettings
from gateway.tenancy.admission import RefusalHook, TenantAdmission
from gateway.tenancy.directory import TenantDirectory
from gateway.tenancy.usage import UsageReader

log = logging.getLogger("llmgw.gateway.tenancy")


@dataclass(frozen=True)
class TenancyOptions:
    """How tenancy is set up (from GatewaySettings, or directly in tests)."""

    tenants_file: Path
    redis_url: str | None = None
    redis_cluster: bool = False
    failure_policy: FailurePolicy = FailurePolicy.OPEN
    # Short, renewed every lease_s/3: a crashed replica's concurrency slots come
    # back within 15 s (a 429 for concurrency tells clients to retry in 1 s).
    lease_s: float = 15.0
    reload_interval_s: float = 1.0
    redis_timeout_s: float = 0.25
    stream_maxlen: int = 1_000_000
    unavailable_retry_s: float = 1.0
    usage_spool: Path | None = None  # usage the store could not take at shutdown


def is_loopback(address: str) -> bool:
    """Whether a listen address (``host:port``) is on loopback only."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Tenancy:
    """The running pieces; ``start`` after the event loop runs, ``close`` on shutdown."""

    directory: TenantDirectory
    admission: TenantAdmission
    usage: UsageReader
    options: TenancyOptions
    _client: object | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _unsubscribe: Callable[[], None] = lambda: None

    @property
    def limiter(self) -> Limiter:
        """Rate limits."""
        return self.admission.limiter

    @property
    def meter(self) -> Meter:
        """Usage metering."""
        return self.admission.meter

    def start(self) -> None:
        """Start lease renewal, the metering writer, the file watcher and SIGHUP reload."""
        self.limiter.start()
        self.meter.start()
        self._tasks.append(
            asyncio.create_task(self.directory.watch(self.options.reload_interval_s))
        )
        self._unsubscribe = on_sighup(self.reload)

    def reload(self) -> bool:
        """Reload the tenant file now."""
        return self.directory.reload()

    async def close(self) -> None:
        """Finish reconciliations, flush metering, close the stores."""
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.admission.drain()
        await self.limiter.close()
        await self.meter.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()  # type: ignore[attr-defined]


def build_tenancy(
    options: TenancyOptions,
    registry: ModelRegistry,
    listen: str,
    on_refused: RefusalHook | None = None,
    on_dropped: DropHook | None = None,
) -> Tenancy:
    """Load the tenant file (ConfigError if bad) and build the stores."""
    names = {n for r in registry.routes for n in (r.name, *r.aliases)}
    directory = TenantDirectory(
        options.tenants_file,
        names,
        lambda name: registry.resolve(name).name,
        allow_demo=is_loopback(listen),
    )
    directory.load()
    limits: LimitStore
    usage: UsageStore
    client = None
    if options.redis_url:
        from gateway.adapters.redis_conn import connect
        from gateway.adapters.redis_limits import RedisLimitStore
        from gateway.adapters.redis_metering import RedisUsageStore

        client = connect(options.redis_url, options.redis_cluster, options.redis_timeout_s)
        limits = RedisLimitStore(client, options.redis_timeout_s)
        usage = RedisUsageStore(client, stream_maxlen=options.stream_maxlen)
        log.info(
            "rate limits and metering in Redis%s; if it is unreachable: fail-%s",
            " Cluster" if options.redis_cluster else "",
            options.failure_policy.value,
        )
    else:
        limits = InMemoryLimitStore()
        usage = InMemoryUsageStore()
        log.info("rate limits and metering in memory (this process only)")
    limiter = Limiter(
        limits,
        options.failure_policy,
        lease_s=options.lease_s,
        unavailable_retry_s=options.unavailable_retry_s,
    )
    spool = UsageSpool(options.usage_spool) if options.usage_spool else None
    meter = Meter(usage, spool=spool, on_dropped=on_dropped)
    admission = TenantAdmission(limiter, meter, on_refused)
    return Tenancy(directory, admission, UsageReader(directory, meter), options, client)


def tenancy_options(settings: GatewaySettings) -> TenancyOptions | None:
    """Tenancy from process settings; None when no tenant file is configured."""
    if settings.tenants is None:
        log.warning("no tenant file: every caller is served, with no API key and no limits")
        return None
    return TenancyOptions(
        tenants_file=settings.tenants,
        redis_url=settings.redis_url,
        redis_cluster=settings.redis_cluster,
        failure_policy=FailurePolicy(settings.redis_failure),
        usage_spool=settings.usage_spool or None,
    )


def check_tenants(settings: GatewaySettings, config: GatewayConfig) -> None:
    """Validate the tenant file before any process starts; ConfigError if it is bad."""
    if settings.tenants is None:
        return
    names = {n for m in config.models for n in (m.name, *m.aliases)}
    aliases = {n: m.name for m in config.models for n in (m.name, *m.aliases)}
    TenantDirectory(
        settings.tenants, names, aliases.__getitem__, allow_demo=is_loopback(settings.listen)
    ).load()
