"""grpclib (gRPC in pure asyncio over h2, no C-core threads) for ``bench.hop_floor``.

Optional: grpclib is not a dependency of this project. ``make bench-floor``
installs it into a throwaway virtualenv of its own and runs the floor there, so
that a pure-asyncio gRPC stack is measured beside grpc.aio and raw TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from grpclib.client import Channel, UnaryStreamMethod
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

PAYLOAD = b"x" * 40
METHOD = "/bench.Floor/Stream"


class Raw:
    """Bytes as a message type: what grpclib's protobuf codec asks of one."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:
        return cls(data)


class _Floor:
    def __mapping__(self) -> dict[str, Handler]:
        return {METHOD: Handler(self.stream, Cardinality.UNARY_STREAM, Raw, Raw)}

    async def stream(self, stream: Stream[Raw, Raw]) -> None:
        request = await stream.recv_message()
        assert request is not None
        count, gap_us = map(int, request.data.split())
        for _ in range(count):
            if gap_us:
                await asyncio.sleep(gap_us / 1e6)
            await stream.send_message(Raw(PAYLOAD))


async def serve(report_port: Callable[[int], None]) -> None:
    """Serve the floor's one method on a free port, reported to ``report_port``."""
    server = Server([_Floor()])
    await server.start("127.0.0.1", 0)
    sockets: Any = server._server.sockets  # type: ignore[union-attr]  # grpclib keeps it private
    report_port(sockets[0].getsockname()[1])
    await server.wait_closed()


class GrpclibClient:
    """Asks over grpclib for ``count`` messages, each after ``gap_s`` of idle, and
    reads them."""

    async def open(self, port: int) -> None:
        self._channel = Channel("127.0.0.1", port)
        self._method: UnaryStreamMethod[Raw, Raw] = UnaryStreamMethod(
            self._channel, METHOD, Raw, Raw
        )

    async def ask(self, count: int, gap_s: float) -> None:
        await self._method(Raw(b"%d %d" % (count, round(gap_s * 1e6))))

    async def close(self) -> None:
        self._channel.close()
