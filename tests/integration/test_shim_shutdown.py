"""SIGTERM to a real shim process: it exits within its grace (plus a little),
however many half-sent bodies and endless streams it holds, and every stream
it cuts off ends with an explicit SSE error event, never a silent cut."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from backends.engines.sim import SimConfig
from tests.conftest import ANY_KEY, Deployment, deploy, free_port

GRACE_S = 2.0
MARGIN_S = 3.0  # process teardown on a busy machine


@pytest.fixture
async def endless() -> AsyncIterator[Deployment]:
    d = await deploy(
        {"sim-small": SimConfig(itl_ms=20, output_tokens=100_000, max_context_tokens=1_000_000)}
    )
    yield d
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


async def _start_shim(gateway: str, port: int, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rest_shim", "--port", str(port), "--gateway", gateway,
            "--shutdown-grace-s", str(GRACE_S), "--metrics-listen", "", "--log-level", "info",
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            assert process.returncode is None, log.read_text()
            assert time.monotonic() < deadline, "the shim did not start"
            await asyncio.sleep(0.05)


async def _half_sent(port: int, key: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + (b"Authorization: Bearer sk-slow\r\n" if key else b"")
        + b'Content-Length: 1000\r\n\r\n{"model": "small", "mess'
    )
    await writer.drain()
    return reader, writer  # the writer too: dropping it would close the connection


async def _stream(base_url: str, events: list[bytes], begun: asyncio.Event) -> None:
    body = {
        "model": "small",
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "max_tokens": 1000,  # 20 s at 20 ms a token: far past the grace
    }
    async with (
        httpx.AsyncClient(base_url=base_url, headers=ANY_KEY, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: ").encode())
                if len(events) > 2:
                    begun.set()


async def test_sigterm_exits_within_the_grace_and_streams_end_with_an_error_event(
    endless: Deployment, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "shim.log"
    process = await _start_shim(endless.address, port, log)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        held.extend([await _half_sent(port, key=True) for _ in range(50)])
        refused.extend([await _half_sent(port, key=False) for _ in range(5)])
        streams: list[list[bytes]] = [[] for _ in range(5)]
        begun = [asyncio.Event() for _ in streams]
        tasks = [
            asyncio.create_task(_stream(f"http://127.0.0.1:{port}", s, b))
            for s, b in zip(streams, begun, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(b.wait() for b in begun)), timeout=30)
        for reader, _ in refused:  # keyless: refused at once, not held
            got = await asyncio.wait_for(reader.read(-1), 10)
            assert got.startswith(b"HTTP/1.1 401"), got

        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        await asyncio.wait_for(process.wait(), timeout=GRACE_S + 30)
        took = time.monotonic() - sent
        print(f"shim exited {took:.2f}s after SIGTERM (grace {GRACE_S}s)")
        assert took < GRACE_S + MARGIN_S, log.read_text()[-3000:]
        # uvicorn re-raises the signal it handled once it is done: a clean SIGTERM exit.
        assert process.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()

        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        for events in streams:
            assert b"[DONE]" not in events
            last = orjson.loads(events[-1])
            assert last["error"]["code"] == "server_shutting_down", last
            assert last["error"]["type"] == "service_unavailable_error"
            assert sum(1 for e in events if b'"content"' in e) >= 2  # it was streaming
        for reader, _ in held:  # closed, not left hanging
            await asyncio.wait_for(reader.read(-1), timeout=10)
    finally:
        for _, writer in (*held, *refused):
            writer.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
