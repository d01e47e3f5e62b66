"""Fixtures of the integration tests that need their own Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
