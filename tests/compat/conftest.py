"""A stack for the compatibility tier: sidecars on the sim engine, the gateway
and the shim, in this event loop, on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from backends.engines.sim import SimConfig
from tests.conftest import Deployment, Shim, deploy, start_shim


@pytest.fixture
async def compat_stack() -> AsyncIterator[tuple[Deployment, Shim]]:
    """Two models: sim-small (text only) and sim-vision (accepts images and audio)."""
    d = await deploy(
        {
            "sim-small": SimConfig(output_tokens=12, max_context_tokens=4096),
            "sim-vision": SimConfig(
                output_tokens=6, input_modalities=["text", "image_url", "input_audio"]
            ),
        },
        default_max_tokens=None,  # as vLLM: no max_tokens means up to the context
    )
    shim, task = await start_shim(d.address, max_body_bytes=256 * 1024)
    yield d, shim
    shim.server.should_exit = True
    await task
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


@pytest.fixture
async def http(compat_stack: tuple[Deployment, Shim]) -> AsyncIterator[httpx.AsyncClient]:
    # The gateway has no tenant file here: any well-formed key is served.
    async with httpx.AsyncClient(
        base_url=compat_stack[1].base_url,
        timeout=30,
        headers={"authorization": "Bearer sk-compat-0123456789"},
    ) as c:
        yield c
