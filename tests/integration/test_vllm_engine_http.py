"""The vllm engine's streaming HTTP clients against a real OpenAI-compatible server.

The server is bench.mock_openai (what `make bench` streams from), in this
event loop on a free port: chunked SSE with continuous usage, keep-alive.
Both clients (the lean one and httpx, kept to measure against) must give
the same events, reuse connections, and close the connection when the
stream is abandoned (that is how vLLM learns to abort).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from backends.engine import Delta, EngineMessage, EngineRequest, EngineUnavailable, Finished
from backends.engines.http_stream import HttpStreamPool
from backends.engines.vllm import VllmConfig, VllmEngine
from bench.mock_openai import MockProtocol, Upstream
from tests.conftest import free_port, wait_until


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, int, list[MockProtocol]]]:
    model = Upstream("m", ttft_s=0.0, itl_s=0.001)
    connections: list[MockProtocol] = []

    def protocol() -> MockProtocol:
        connections.append(MockProtocol(model))
        return connections[-1]

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield model, port, connections
    server.close()


def request(max_tokens: int) -> EngineRequest:
    return EngineRequest("r", "m", [EngineMessage("user", "hi")], max_tokens=max_tokens)


async def started(port: int, client: str) -> VllmEngine:
    engine = VllmEngine(
        VllmConfig(url=f"http://127.0.0.1:{port}", served_model="m", http_client=client)
    )
    await engine.start()
    await wait_until(engine.ready, timeout=10)
    return engine


@pytest.mark.parametrize("client", ["lean", "httpx"])
async def test_streams_every_token_then_the_usage(
    upstream: tuple[Upstream, int, list[MockProtocol]], client: str
) -> None:
    _, port, connections = upstream
    engine = await started(port, client)
    try:
        for _ in range(3):  # sequential requests share one kept-alive connection
            events = [e async for e in engine.generate(request(20))]
            deltas = [e for e in events if isinstance(e, Delta)]
            assert "".join(d.text for d in deltas) == "".join(Upstream.word(i) for i in range(20))
            assert sum(d.token_count for d in deltas) == 20
            assert events[-1] == Finished(events[-1].reason, 16, 20)  # type: ignore[union-attr]
        # the monitor's pool has its own connection(s); the streams reused one
        assert len(connections) <= 3
    finally:
        await engine.close()


@pytest.mark.parametrize("client", ["lean", "httpx"])
async def test_abandoning_a_stream_closes_its_connection(
    upstream: tuple[Upstream, int, list[MockProtocol]], client: str
) -> None:
    model, port, _ = upstream
    engine = await started(port, client)
    try:
        async with aclosing(engine.generate(request(100_000))) as events:
            first = await anext(events)
            assert isinstance(first, Delta)
            assert model.running == 1
        # the server saw the client leave and stopped "generating"
        await wait_until(lambda: model.running == 0, timeout=10)
    finally:
        await engine.close()


async def test_an_unreachable_server_is_unavailable_not_a_hang() -> None:
    pool = HttpStreamPool(f"http://127.0.0.1:{free_port()}", connect_timeout_s=5)
    try:
        with pytest.raises(Exception) as failed:
            await pool.request("POST", "/v1/chat/completions", b"{}", {})
        assert type(failed.value).__name__ == "ConnectFailed"
    finally:
        await pool.close()


async def test_the_engine_maps_a_refused_connection_to_unavailable(
    upstream: tuple[Upstream, int, list[MockProtocol]],
) -> None:
    _, port, _ = upstream
    engine = await started(port, "lean")
    try:
        engine._pool = HttpStreamPool(f"http://127.0.0.1:{free_port()}")  # the server went away
        with pytest.raises(EngineUnavailable):
            async for _ in engine.generate(request(3)):
                pass
    finally:
        await engine.close()
