"""Redis connections (single server or Cluster) and Lua scripts that survive restarts.

Every key of one tenant carries the hash tag ``{llmgw:<tenant>}``, so on a
Redis Cluster they share one slot and a tenant's Lua script runs on one node.
A call is retried once at once (a pooled connection that died with a
restarted server reconnects), no more: the limiter decides what an
unreachable Redis means (fail-open or fail-closed) and must learn it within
one timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from gateway.limits.ports import StoreUnavailable

log = logging.getLogger("llmgw.gateway.redis")

RedisClient = aioredis.Redis | RedisCluster
T = TypeVar("T")


def tenant_tag(tenant: str) -> str:
    """The hash-tagged prefix of every key of ``tenant``."""
    return "{llmgw:" + tenant + "}"


def connect(url: str, cluster: bool = False, timeout_s: float = 0.5) -> RedisClient:
    """A client for ``url`` (``redis://host:port/db``); a cluster client if ``cluster``."""
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )


async def guarded(call: Awaitable[T], timeout_s: float) -> T:
    """Await a Redis call; any Redis or socket failure, or a timeout, is StoreUnavailable."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except (RedisError, OSError, TimeoutError) as error:
        raise StoreUnavailable(f"{type(error).__name__}: {error}"[:200]) from error


class Script:
    """A Lua script run by EVALSHA, loaded again when the server lost it (a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: RedisClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script with ``keys`` and ``args``."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)
