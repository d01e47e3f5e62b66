"""SIGTERM to a real sidecar process: NOT_SERVING at once, streams in flight get the
configured grace, then end with an error status (never a clean end), and the
process exits within the grace plus a little."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmgw.backend.v1 import backend_pb2 as pb
from llmgw.backend.v1 import backend_pb2_grpc as pb_grpc
from tests.conftest import free_port

GRACE_S = 1.0
MARGIN_S = 3.0


async def _start(port: int, log: Path) -> asyncio.subprocess.Process:
    sim = orjson.dumps({"itl_ms": 20, "output_tokens": 100_000, "max_context_tokens": 1_000_000})
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backends", "--listen", f"127.0.0.1:{port}",
            "--sim-config", sim.decode(), "--shutdown-grace-s", str(GRACE_S),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    return process


async def test_sigterm_ends_streams_after_the_grace_and_exits(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sidecar.log"
    process = await _start(port, log)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline and process.returncode is None, log.read_text()
            await asyncio.sleep(0.05)
        request = pb.GenerateRequest(
            request_id="r1",
            model="sim",
            messages=[pb.Message(role=pb.ROLE_USER, content="go")],
            sampling=pb.SamplingParams(max_tokens=100_000),
        )
        stream = pb_grpc.BackendServiceStub(channel).Generate(request)
        deltas = 0
        async for message in stream:
            deltas += message.HasField("delta")
            if deltas >= 3:
                break
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            async for _ in stream:
                pass
        except grpc.aio.AioRpcError as error:
            code = error.code()
        assert code != grpc.StatusCode.OK  # an error status, not a stream that looks finished
        await asyncio.wait_for(process.wait(), timeout=GRACE_S + 30)
        took = time.monotonic() - sent
        print(f"sidecar exited {took:.2f}s after SIGTERM (grace {GRACE_S}s); stream ended {code}")
        assert took < GRACE_S + MARGIN_S, log.read_text()[-3000:]
        assert process.returncode == 0, log.read_text()[-3000:]
    finally:
        await channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
