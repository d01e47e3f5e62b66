"""Clients that stop reading: bounded gateway memory, no oversized message, stall cut-off.

A real gateway process between a real sidecar (in this process, so the test
can count what its engine produced) and gRPC clients that open long
streams and read nothing. Issue: before bounded buffers the gateway drained
the backend into memory however far behind the client was, then sent the
backlog as one message over the receiver's 16 MiB limit.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import yaml

from backends.engine import Delta, EngineRequest, Finished, LoadReport
from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from common.batching import StreamLimits
from common.grpcutil.status import parse_status
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import free_port, user, wait_until

TOKENS = 400_000  # ~3 MB of text a stream: far more than any buffer on the way
MESSAGE_CHARS = 2000  # the gateway's cap on one merged delta, small so the test can see it


class CountingEngine:
    """A sim engine that counts the tokens it has produced and notices aborts."""

    def __init__(self) -> None:
        self.inner = SimEngine(
            SimConfig(output_tokens=TOKENS, max_context_tokens=2 * TOKENS, max_concurrency=16)
        )
        self.tokens = 0
        self.closed = 0

    async def generate(self, request: EngineRequest) -> AsyncIterator[Delta | Finished]:
        try:
            async for event in self.inner.generate(request):
                if type(event) is Delta:
                    self.tokens += event.token_count
                yield event
        finally:
            self.closed += 1

    def load(self) -> LoadReport:
        return self.inner.load()

    def ready(self) -> bool:
        return self.inner.ready()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def until_stable(read: Callable[[], int], polls: int = 10, timeout_s: float = 60) -> int:
    """Wait until ``read()`` returns the same value ``polls`` times in a row, 50 ms apart."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last, same = read(), 0
    while same < polls:
        assert loop.time() < deadline, "the value never settled"
        await asyncio.sleep(0.05)
        now = read()
        same = same + 1 if now == last else 0
        last = now
    return last


async def start_gateway_process(
    tmp_path: Path, sidecar_port: int, stall_timeout_s: float
) -> tuple[asyncio.subprocess.Process, int]:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "long",
                        "endpoints": [f"127.0.0.1:{sidecar_port}"],
                        "default_max_tokens": TOKENS,
                        "max_output_tokens": TOKENS,
                    }
                ],
                "resilience": {
                    "idle_timeout_s": 600,
                    "streaming": {
                        "max_buffered_chars": 8 * 1024,
                        "max_message_chars": MESSAGE_CHARS,
                        "stall_timeout_s": stall_timeout_s,
                    },
                },
            }
        )
    )
    port = free_port()
    with (tmp_path / "gateway.log").open("wb") as log:  # the child keeps its own copy
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", "", stderr=log,
        )  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
    return process, port


@pytest.fixture
async def engine() -> AsyncIterator[tuple[CountingEngine, int]]:
    counting = CountingEngine()
    # The sidecar's own buffer bounded small too, so the whole chain's slack is small.
    limits = StreamLimits(max_buffered=8 * 1024, max_batch=MESSAGE_CHARS, stall_timeout_s=600)
    sidecar = await start_sidecar(counting, limits=limits)  # type: ignore[arg-type]
    yield counting, sidecar.port
    await sidecar.stop(0)


def request() -> pb.StreamChatCompletionRequest:
    return pb.StreamChatCompletionRequest(
        params=pb.ChatCompletionParams(model="long", messages=[user("go")], max_tokens=TOKENS),
        include_usage=True,
    )


async def test_non_reading_clients_pause_the_engine_and_keep_the_gateway_small(
    tmp_path: Path, engine: tuple[CountingEngine, int]
) -> None:
    counting, sidecar_port = engine
    process, port = await start_gateway_process(tmp_path, sidecar_port, stall_timeout_s=600)
    try:
        baseline = rss_mib(process.pid)
        # A client that does not let its flow-control window grow (no BDP probing):
        # once 64 KiB are unread, HTTP/2 stops the gateway's writes.
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = pb_grpc.ChatServiceStub(channel)
            calls = [stub.StreamChatCompletion(request()) for _ in range(5)]
            # Nobody reads: backpressure must reach the engine, which stops producing
            # (once it has started: a loaded machine can take a while to get there).
            await wait_until(lambda: counting.tokens > 0)
            produced = await until_stable(lambda: counting.tokens)
            assert 0 < produced < 5 * TOKENS // 4, produced  # paused well before the end
            grown = rss_mib(process.pid) - baseline
            assert grown < 64, f"the gateway grew {grown:.0f} MiB for five stalled readers"
            # Now read everything: in order, complete, no message over the cap.
            for call in calls:
                tokens, largest, ended = 0, 0, False
                async for message in call:
                    if message.HasField("delta"):
                        largest = max(largest, len(message.delta.content))
                    elif message.HasField("end"):
                        tokens, ended = message.end.usage.completion_tokens, True
                assert ended and tokens == TOKENS
                assert 0 < largest <= MESSAGE_CHARS
        assert counting.tokens == 5 * TOKENS
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)


async def test_a_client_that_stalls_past_the_timeout_is_cut_off_and_the_engine_aborted(
    tmp_path: Path, engine: tuple[CountingEngine, int]
) -> None:
    counting, sidecar_port = engine
    process, port = await start_gateway_process(tmp_path, sidecar_port, stall_timeout_s=0.5)
    try:
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(request())
            await call.initial_metadata()
            # Nothing reads: after the stall timeout the engine's stream is closed.
            await wait_until(lambda: counting.closed == 1, timeout=60)
            assert counting.tokens < TOKENS
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in call:
                    pass  # what was already buffered still arrives, then the error
        status = parse_status(failed.value)
        assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert status.reason == "client_stalled"
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    # Recorded as the client's stall, not as a gateway fault (no traceback, no INTERNAL).
    lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()]
    (access,) = [line for line in lines if line.get("logger") == "llmgw.access"]
    assert access["outcome"] == "client_stalled", access
    assert not [line for line in lines if line.get("level") == "ERROR"], lines
