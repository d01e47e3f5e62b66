"""The vLLM-engine sidecar with its vLLM absent (loading or down), over real gRPC.

The sidecar must come up before vLLM, say NOT_SERVING, refuse work with
UNAVAILABLE (retryable) rather than hang, and still answer GetLoad. The
healthy path is covered against real vLLM servers in tests/e2e.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backends.engines.vllm import VllmConfig, VllmEngine
from backends.server import RunningSidecar, start_sidecar
from common.grpcutil.status import parse_status
from llmgw.backend.v1 import backend_pb2 as pb
from llmgw.backend.v1 import backend_pb2_grpc as pb_grpc
from tests.conftest import free_port


@pytest.fixture
async def sidecar() -> AsyncIterator[RunningSidecar]:
    # Nothing listens on this port: a vLLM still loading, or dead.
    engine = VllmEngine(
        VllmConfig(url=f"http://127.0.0.1:{free_port()}", served_model="m", capacity=7)
    )
    running = await start_sidecar(engine)
    yield running
    await running.stop(0)


async def test_reports_not_serving_while_vllm_is_absent(sidecar: RunningSidecar) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "llmgw.backend.v1.BackendService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        load = await pb_grpc.BackendServiceStub(channel).GetLoad(pb.GetLoadRequest(), timeout=2)
        assert (load.running, load.waiting, load.capacity) == (0, 0, 7)


async def test_generate_fails_fast_with_a_retryable_unavailable(sidecar: RunningSidecar) -> None:
    request = pb.GenerateRequest(
        request_id="r1",
        model="m",
        messages=[pb.Message(role=pb.ROLE_USER, content="hi")],
        sampling=pb.SamplingParams(max_tokens=4),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in pb_grpc.BackendServiceStub(channel).Generate(request, timeout=10):
                pass
    assert time.monotonic() - started < 5  # at once, not at the call's 10 s deadline
    status = parse_status(failed.value)
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.reason == "engine_unavailable" and status.retry_after_s is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "vllm"], "--engine vllm needs --vllm-url"),
        (["--engine", "vllm", "--vllm-url", "127.0.0.1:8000"], "must start with http://"),
        (["--sim-config", "{nope"], "--sim-config is not valid JSON"),
        (["--sim-config", '{"ttft_ms": -1}'], "ttft_ms"),
    ],
)
def test_cli_refuses_bad_settings_without_a_traceback(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backends", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
