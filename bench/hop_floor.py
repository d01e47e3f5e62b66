"""What one hop costs at a real model's pace before any gateway code runs.

``python -m bench.hop_floor [--quick] [--calls 200] [--streams 20] [--markdown PATH]``

A hop of this gateway relays each token as it arrives, and at a real model's
pace (tens of milliseconds between tokens) every process is idle between two
tokens. This measures the floor such a hop stands on, on this machine, with no
llmgw code in the path: a server process and a client process, on uvloop, in
three ways:

- ``timer``: one process waking from an idle ``asyncio.sleep(0.01)`` and doing
  nothing else: what any wake-up costs here.
- ``stream``: a server streams 64 small messages 10 ms apart to a client
  (a 64-token reply); CPU per message on each side. Over grpc.aio (a
  unary-stream call, as between the shim, gateway and sidecar) and over a raw
  asyncio TCP connection (one line a message).
- ``call``: the client asks, the server waits (idle: 0, 10, 50 or 250 ms, as
  between tokens, before a first token, between a quiet client's requests) and
  answers; the added latency (p50, p90) and CPU per call on each side. Over
  grpc.aio (a new unary-stream call each time, on one channel) and over raw
  TCP (one line each way, one connection). On a VM, work that follows a longer
  idle runs slower (cold caches, a descheduled vCPU): compare the idle rows.

Where grpclib is installed (``make bench-floor`` runs this in a throwaway
virtualenv that has it), a third transport is measured: gRPC in pure asyncio
over h2, with no C-core threads.

Ratios between the rows, not absolute figures, say what grpc.aio adds to each
hop: its C-core threads hand every message to the event loop's thread, and the
context-switch columns (all threads of each process, per unit) count those
hand-offs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import uvloop

from bench.procstat import context_switches, tree_cpu_seconds

GAP_S = 0.01  # between two tokens at a real model's pace
# Idle before the reply in the call test: none (a busy hop), a token's gap, a first
# token's wait, and a quiet client's pause between requests.
IDLE_S = (0.0, 0.01, 0.05, 0.25)
_CALL_BUDGET_S = 8.0  # at most about this long per (transport, idle) with long idles
MESSAGES = 64  # a reply
PAYLOAD = b"x" * 40  # about one token's delta message
_METHOD = "/bench.Floor/Stream"


def _request(count: int, gap_s: float) -> bytes:
    """What a client asks: ``count`` messages, each after ``gap_s`` of idle."""
    return b"%d %d" % (count, round(gap_s * 1e6))


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- servers (each runs in a process of its own) ---------------------------


async def _grpc_server(report_port: Callable[[int], None]) -> None:
    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        count, gap_us = map(int, request.split())
        for _ in range(count):
            if gap_us:
                await asyncio.sleep(gap_us / 1e6)
            yield PAYLOAD

    handler = grpc.method_handlers_generic_handler(
        "bench.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    report_port(port)
    await server.wait_for_termination()


async def _tcp_server(report_port: Callable[[int], None]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            count, gap_us = map(int, line.split())
            for _ in range(count):
                if gap_us:
                    await asyncio.sleep(gap_us / 1e6)
                writer.write(PAYLOAD + b"\n")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    report_port(server.sockets[0].getsockname()[1])
    await server.serve_forever()


# ---- clients -----------------------------------------------------------------


class _Client(Protocol):
    """One way of asking the server for ``count`` messages, each sent after ``gap_s``
    of idle, and reading them."""

    async def open(self, port: int) -> None: ...

    async def ask(self, count: int, gap_s: float) -> None: ...

    async def close(self) -> None: ...


class _GrpcClient:
    async def open(self, port: int) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._call = self._channel.unary_stream(_METHOD)

    async def ask(self, count: int, gap_s: float) -> None:
        async for _ in self._call(_request(count, gap_s)):
            pass

    async def close(self) -> None:
        await self._channel.close()


class _TcpClient:
    async def open(self, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)

    async def ask(self, count: int, gap_s: float) -> None:
        self._writer.write(_request(count, gap_s) + b"\n")
        for _ in range(count):
            await self._reader.readline()

    async def close(self) -> None:
        self._writer.close()


@dataclass(frozen=True)
class Window:
    """Server and client CPU seconds and context switches over a measured window."""

    server_cpu_s: float
    client_cpu_s: float
    server_switches: int
    client_switches: int


@dataclass(frozen=True)
class Row:
    """One measurement: CPU per unit on each side, and the added latency (calls)."""

    test: str
    transport: str
    unit: str
    server_us: float
    client_us: float
    server_switches: float
    client_switches: float
    added_p50_ms: float | None = None
    added_p90_ms: float | None = None


def _transports() -> list[str]:
    """grpc.aio and raw TCP; grpclib too where it is installed (make bench-floor)."""
    found = importlib.util.find_spec("grpclib") is not None
    return ["grpc.aio", "raw TCP"] + (["grpclib"] if found else [])


def _server(transport: str) -> Callable[[Callable[[int], None]], Awaitable[None]]:
    if transport == "grpclib":
        from bench import hop_floor_grpclib

        return hop_floor_grpclib.serve
    return _grpc_server if transport == "grpc.aio" else _tcp_server


def _client(transport: str) -> _Client:
    if transport == "grpclib":
        from bench import hop_floor_grpclib

        return hop_floor_grpclib.GrpclibClient()
    return _GrpcClient() if transport == "grpc.aio" else _TcpClient()


def _start_server(transport: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"{transport.replace(' ', '-')}.port"
    proc = subprocess.Popen([sys.executable, "-m", "bench.hop_floor", "--serve", transport,
                             "--port-file", str(port_file)])  # fmt: skip
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {transport} server did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def _window(server_pid: int) -> Window:
    return Window(
        tree_cpu_seconds({"s": server_pid})["s"],
        _own_cpu_s(),
        context_switches(server_pid),
        context_switches(os.getpid()),
    )


async def _measure(
    client: _Client, port: int, server_pid: int, work: Callable[[], Awaitable[list[float]]]
) -> tuple[Window, list[float]]:
    """What ``work`` cost (after a warm-up call, outside the window), and its timings."""
    await client.open(port)
    await client.ask(2, 0.0)
    before = _window(server_pid)
    timings = await work()
    after = _window(server_pid)
    await client.close()
    return Window(
        after.server_cpu_s - before.server_cpu_s,
        after.client_cpu_s - before.client_cpu_s,
        after.server_switches - before.server_switches,
        after.client_switches - before.client_switches,
    ), timings


def _row(test: str, transport: str, unit: str, units: int, used: Window) -> Row:
    return Row(test, transport, unit, 1e6 * used.server_cpu_s / units,
               1e6 * used.client_cpu_s / units, used.server_switches / units,
               used.client_switches / units)  # fmt: skip


async def _stream_row(transport: str, client: _Client, port: int, pid: int, streams: int) -> Row:
    async def work() -> list[float]:
        for _ in range(streams):
            await client.ask(MESSAGES, GAP_S)
        return []

    used, _ = await _measure(client, port, pid, work)
    return _row("stream", transport, "message", streams * MESSAGES, used)


async def _call_row(
    transport: str, client: _Client, port: int, pid: int, calls: int, idle_s: float
) -> Row:
    async def work() -> list[float]:
        added = []
        for _ in range(calls):
            began = time.perf_counter()
            await client.ask(1, idle_s)
            added.append(time.perf_counter() - began - idle_s)
        return added

    used, added = await _measure(client, port, pid, work)
    row = _row(f"call, {idle_s * 1e3:.0f} ms idle", transport, "call", calls, used)
    deciles = statistics.quantiles(added, n=10)
    return dataclasses.replace(
        row, added_p50_ms=1e3 * statistics.median(added), added_p90_ms=1e3 * deciles[8]
    )


async def _timer_row(wakes: int) -> Row:
    before, switched = _own_cpu_s(), context_switches(os.getpid())
    for _ in range(wakes):
        await asyncio.sleep(GAP_S)
    used = Window(0.0, _own_cpu_s() - before, 0, context_switches(os.getpid()) - switched)
    return _row("timer", "none", "wake-up", wakes, used)


async def measure(calls: int, streams: int) -> list[Row]:
    """Every row: the timer, then each transport in turn, one server process each, in one run."""
    rows = [await _timer_row(streams * MESSAGES)]
    with tempfile.TemporaryDirectory() as tmp:
        for transport in _transports():
            proc, port = _start_server(transport, Path(tmp))
            try:
                client = _client(transport)
                rows.append(await _stream_row(transport, client, port, proc.pid, streams))
                for idle_s in IDLE_S:
                    # A long idle takes long: fewer calls, each still a sample.
                    count = min(calls, max(20, round(_CALL_BUDGET_S / idle_s))) if idle_s else calls
                    client = _client(transport)
                    rows.append(await _call_row(transport, client, port, proc.pid, count, idle_s))
            finally:
                proc.terminate()
                proc.wait()
    order = list(dict.fromkeys(r.test for r in rows))  # timer, stream, calls by idle
    return sorted(rows, key=lambda r: order.index(r.test))


def to_markdown(rows: list[Row]) -> str:
    """A Markdown table of ``rows``."""

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    lines = [
        "| test | transport | unit | server CPU µs | client CPU µs | server context switches "
        "| client context switches | added latency p50 ms | p90 ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        timer = r.test == "timer"
        server = "" if timer else f"{r.server_us:.0f}"
        server_switches = "" if timer else f"{r.server_switches:.1f}"
        lines.append(f"| {r.test} | {r.transport} | {r.unit} | {server} | {r.client_us:.0f} "
                     f"| {server_switches} | {r.client_switches:.1f} "
                     f"| {ms(r.added_p50_ms)} | {ms(r.added_p90_ms)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the measurements (or, with --serve, be one of the servers)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls in the call test")
    parser.add_argument("--streams", type=int, default=20, help="64-message streams")
    parser.add_argument("--quick", action="store_true", help="half the calls and streams")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--serve", choices=_transports(), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        server = _server(args.serve)
        port_file: Path = args.port_file
        uvloop.run(server(lambda port: port_file.write_text(str(port)) and None))
        return
    load = os.getloadavg()[0]
    # The server's CPU is read in clock ticks (10 ms): fewer units, coarser figures.
    share = 2 if args.quick else 1
    calls, streams = args.calls // share, args.streams // share
    table = to_markdown(uvloop.run(measure(calls, streams)))
    print(f"load average before: {load:.2f}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
