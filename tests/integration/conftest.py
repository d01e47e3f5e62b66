"""Fixtures of the integration tests: their own Redis, and clients of the shim that
``tests.conftest``'s ``shim`` fixture puts in front of a test's ``deployment``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ANY_KEY, Shim
from tests.redis_server import RedisServer, start_cluster


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port (not the machine's own)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """A 3-primary Redis Cluster on loopback."""
    servers = start_cluster(tmp_path / "cluster")
    yield servers
    for server in servers:
        server.kill()


@pytest.fixture
async def client(shim: Shim) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK, against the shim (a keyless gateway: any key will do)."""
    async with openai.AsyncOpenAI(
        base_url=shim.base_url + "/v1", api_key="sk-test", max_retries=0
    ) as c:
        yield c


@pytest.fixture
async def http(shim: Shim) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the shim, with a well-formed credential."""
    async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as c:
        yield c
