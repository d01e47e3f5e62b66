"""`python -m gateway --workers N`: N processes serve one port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
import httpx

from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import free_port, params


def listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (each SO_REUSEPORT process has its own)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                count += 1
    return count


async def test_workers_share_one_port_and_all_serve(tmp_path: Path) -> None:
    sidecar = await start_sidecar(SimEngine(SimConfig(output_tokens=3)))
    config = tmp_path / "gateway.yaml"
    config.write_text(f"models:\n  - name: small\n    endpoints: ['127.0.0.1:{sidecar.port}']\n")
    port, metrics_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--workers", "3",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            if listeners(port) == 3:
                break
            await asyncio.sleep(0.05)
        assert listeners(port) == 3

        async def one_call() -> str:
            # A fresh channel per call is a fresh connection, spread by the kernel.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                    pb.CreateChatCompletionRequest(params=params())
                )
                return reply.finish_reason

        results = await asyncio.gather(*(one_call() for _ in range(30)))
        assert results == [pb.FINISH_REASON_STOP] * 30
        # /metrics (its own port) sums the workers' samples: all 30 are counted once.
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("llmgw_gateway_requests_total{") and 'outcome="ok"' in line
        )
        assert counted == 30, text[:2000]
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        await sidecar.stop(0)
    assert listeners(port) == 0  # the workers went with the parent


async def test_bad_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("models:\n  - name: small\n    endpoints: ['nope']\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"models.0.endpoints" in err and b"Traceback" not in err


async def test_each_worker_also_serves_on_its_own_address(tmp_path: Path) -> None:
    sidecar = await start_sidecar(SimEngine(SimConfig(output_tokens=3)))
    config = tmp_path / "gateway.yaml"
    config.write_text(f"models:\n  - name: small\n    endpoints: ['127.0.0.1:{sidecar.port}']\n")
    port, own = free_port(), [free_port(), free_port()]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}",
        "--workers", "2", "--worker-listen", ",".join(f"127.0.0.1:{p}" for p in own),
        "--metrics-listen", "",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(400):
            if listeners(port) == 2 and all(listeners(p) == 1 for p in own):
                break
            await asyncio.sleep(0.05)
        assert listeners(port) == 2 and [listeners(p) for p in own] == [1, 1]
        for p in own:  # each worker's own address serves the API
            async with grpc.aio.insecure_channel(f"127.0.0.1:{p}") as channel:
                reply = await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                    pb.CreateChatCompletionRequest(params=params())
                )
                assert reply.finish_reason == pb.FINISH_REASON_STOP
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        await sidecar.stop(0)
