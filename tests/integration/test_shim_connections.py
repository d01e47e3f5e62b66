"""The shim's connection limits over raw sockets: header size and count, and
timeouts for slow headers, half-sent bodies and idle keep-alive connections."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from backends.engines.sim import SimConfig
from tests.conftest import ANY_KEY, Deployment, Shim, deploy, start_shim


@pytest.fixture
async def gateway() -> AsyncIterator[Deployment]:
    d = await deploy({"sim-small": SimConfig(output_tokens=4)})
    yield d
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


@pytest.fixture
async def shim(gateway: Deployment) -> AsyncIterator[Shim]:
    s, task = await start_shim(
        gateway.address,
        max_header_bytes=8192,
        max_headers=20,
        header_timeout_s=0.5,
        body_timeout_s=0.5,
        keepalive_timeout_s=0.5,
    )
    yield s
    s.server.should_exit = True
    await task


async def _connect(shim: Shim) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(shim.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and everything up to the close (fails if the shim never closes)."""
    data = await asyncio.wait_for(reader.read(-1), timeout=30)
    return int(data.split(b" ", 2)[1]), data


def _endless_header(port: int) -> tuple[int, bytes]:
    """Send one header that never ends until the shim stops us; return (bytes sent, answer).

    A plain blocking socket: the shim closes with our bytes unread, so the kernel
    resets the connection, and only recv() still hands over what arrived before."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sent = 0
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < 4_000_000:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        return sent, data


async def test_headers_over_the_size_limit_are_431_before_they_end(shim: Shim) -> None:
    port = int(shim.base_url.rsplit(":", 1)[1])
    sent, data = await asyncio.to_thread(_endless_header, port)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert b"connection: close" in data.lower()
    assert sent < 4_000_000  # cut off, not read to the end


async def test_too_many_header_fields_are_431(shim: Shim) -> None:
    reader, writer = await _connect(shim)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(21))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    status, data = await _answer(reader)
    assert status == 431 and b"at most 20" in data
    writer.close()


async def test_requests_under_the_limits_are_served(shim: Shim) -> None:
    headers = {**ANY_KEY, **{f"x-f{i}": "v" * 100 for i in range(10)}}
    async with httpx.AsyncClient(base_url=shim.base_url, headers=headers) as http:
        body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200


@pytest.mark.parametrize(
    "prefix",
    [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bear"],
    ids=["silent", "slow-headers"],
)
async def test_slow_or_absent_headers_are_timed_out(shim: Shim, prefix: bytes) -> None:
    reader, writer = await _connect(shim)
    writer.write(prefix)
    data = await asyncio.wait_for(reader.read(-1), timeout=30)
    assert data.startswith(b"HTTP/1.1 408") and b"headers not received" in data
    writer.close()


async def test_a_half_sent_body_is_timed_out(shim: Shim) -> None:
    reader, writer = await _connect(shim)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": '
    )
    status, data = await _answer(reader)
    assert status == 408 and b"body not received" in data
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(shim: Shim) -> None:
    reader, writer = await _connect(shim)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, data = await _answer(reader)  # answered, then closed when idle
    assert status == 200 and data.endswith(b'{"status":"ok"}')
    writer.close()
