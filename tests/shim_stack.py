"""The REST shim in front of a (tenanted) deployment, with each tenant's key, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import openai

from backends.server import RunningSidecar
from tests.conftest import Deployment, Shim, start_shim


@dataclass
class ShimStack:
    """A deployment, the REST shim in front, and each tenant's key."""

    d: Deployment
    shim: Shim
    keys: dict[str, str]

    def client(self, key: str) -> openai.AsyncOpenAI:
        """The official SDK against the shim with ``key`` (no retries: a test sees every answer)."""
        return openai.AsyncOpenAI(base_url=self.shim.base_url + "/v1", api_key=key, max_retries=0)


@asynccontextmanager
async def shim_in_front(
    d: Deployment, keys: dict[str, str], *others: RunningSidecar
) -> AsyncIterator[ShimStack]:
    """Serve the shim in front of ``d``; on the way out stop it, then ``d`` and ``others``."""
    shim, task = await start_shim(d.address)
    try:
        yield ShimStack(d, shim, keys)
    finally:
        shim.server.should_exit = True
        await task
        await d.stop(*others)
