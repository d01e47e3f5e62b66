"""The shim spreads requests, not connections, over gateway replicas.

Two gateways (as two pods of a headless Service, or two workers with
--worker-listen), each with its own sim sidecar; the shim's target names
both (``ipv4:A,B``). Every chat call goes round robin, so twenty calls are
served ten and ten, counted by each gateway's engine.
"""

from __future__ import annotations

import asyncio

import httpx

from backends.engines.sim import SimConfig
from tests.conftest import deploy, start_shim

BODY = {"model": "sim-small", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


async def test_requests_alternate_over_every_gateway_address() -> None:
    one = await deploy({"sim-small": SimConfig(output_tokens=3)})
    two = await deploy({"sim-small": SimConfig(output_tokens=3)})
    target = f"ipv4:127.0.0.1:{one.gateway.port},127.0.0.1:{two.gateway.port}"
    shim, task = await start_shim(target, require_api_key=False)
    engines = (one.engines["sim-small"], two.engines["sim-small"])
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, timeout=30) as http:

            async def call(stream: bool = False) -> None:
                answer = await http.post("/v1/chat/completions", json={**BODY, "stream": stream})
                assert answer.status_code == 200, answer.text

            # Until every subchannel of every channel is connected, round robin
            # only has the ready ones to pick from: warm up until both serve.
            async def both_used_recently() -> bool:
                before = [e.received for e in engines]
                await asyncio.gather(*(call() for _ in range(8)))
                return all(e.received - b >= 2 for e, b in zip(engines, before, strict=True))

            for _ in range(100):
                if await both_used_recently():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("one gateway never got a request")
            before = [e.received for e in engines]
            for i in range(20):  # one at a time: each call takes the next address
                await call(stream=i % 2 == 0)
            served = [e.received - b for e, b in zip(engines, before, strict=True)]
        assert served == [10, 10], served
    finally:
        shim.server.should_exit = True
        await task
        for d in (one, two):
            await d.channel.close()
            await d.gateway.stop(0)
            for s in d.sidecars:
                await s.stop(0)
