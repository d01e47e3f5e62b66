"""Key rotation and tenant-file reload on real gateway processes (two workers
sharing one Redis): a key created by the CLI works without a restart, a
revoked one stops working, a bad file is refused with a clear log line while
the old tenants keep serving, and SIGHUP reloads at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import free_port, params, wait_until
from tests.redis_server import RedisServer
from tests.tenancy_helpers import bearer, tenant, write_tenants


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


async def call(port: int, key: str) -> grpc.StatusCode:
    # A fresh channel per call: a new connection, spread over the workers by the kernel.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params(max_tokens=2)),
                metadata=bearer(key),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def all_calls(port: int, key: str, n: int = 8) -> set[grpc.StatusCode]:
    return set(await asyncio.gather(*(call(port, key) for _ in range(n))))


async def eventually(port: int, key: str, expected: grpc.StatusCode, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await all_calls(port, key)) != {expected}:
        assert loop.time() < deadline, f"still {seen}, wanted {expected}"
        await asyncio.sleep(0.2)


async def test_keys_rotate_and_the_file_reloads_without_a_restart(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sidecar = await start_sidecar(SimEngine(SimConfig(output_tokens=3)))
    config = tmp_path / "gateway.yaml"
    config.write_text(f"models:\n  - name: small\n    endpoints: ['127.0.0.1:{sidecar.port}']\n")
    tenants = tmp_path / "tenants.yaml"
    # acme: a burst of five and next to no refill (one a minute), however slow the calls.
    keys = write_tenants(tenants, [tenant("acme", rpm=1, requests_burst=5), tenant("beta")])
    port = free_port()
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:  # noqa: ASYNC230
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}",
            "--workers", "2", "--tenants", str(tenants), "--redis-url", redis_server.url, "--metrics-listen", "",
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await eventually(port, keys["beta"], grpc.StatusCode.OK, timeout=30)
        # The two workers share acme's five-request burst through Redis.
        results = [await call(port, keys["acme"]) for _ in range(8)]
        assert results.count(grpc.StatusCode.OK) == 5, results
        assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 3

        created = cli("keys", "create", "--tenant", "beta", "--tenants", str(tenants))
        assert created.returncode == 0, created.stderr
        new_key = created.stdout.strip()
        assert new_key not in tenants.read_text()
        await eventually(port, new_key, grpc.StatusCode.OK)  # both workers reloaded the file

        old_id = keys["beta"].split("_")[1]
        revoked = cli("keys", "revoke", old_id, "--tenants", str(tenants))
        assert revoked.returncode == 0, revoked.stderr
        await eventually(port, keys["beta"], grpc.StatusCode.UNAUTHENTICATED)
        assert await all_calls(port, new_key) == {grpc.StatusCode.OK}

        good = tenants.read_text()
        tenants.write_text(good.replace("requests_per_minute: 1000", "requests_per_minute: -1"))
        # Both workers see the bad file (each logs it) and keep serving the previous one.
        rejected = "tenant file rejected, still serving the previous one"
        await wait_until(lambda: log.read_text().count(rejected) >= 2)
        assert await all_calls(port, new_key) == {grpc.StatusCode.OK}  # the old tenants still serve

        # SIGHUP reloads at once (the poll would too, within a second).
        tenants.write_text(good.replace("name: beta", "name: gamma"))
        process.send_signal(signal.SIGHUP)
        await eventually(port, new_key, grpc.StatusCode.OK)
        assert "tenant file" in log.read_text() and "reloaded" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)
        await sidecar.stop(0)
    text = log.read_text()
    assert "Traceback" not in text
    for key in (*keys.values(), new_key):
        assert key not in text


async def test_a_bad_tenant_file_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("models:\n  - name: small\n    endpoints: ['127.0.0.1:1']\n")
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "tenants:\n  - name: acme\n    models: [huge]\n    limits: {requests_per_minute: 1, tokens_per_minute: 1}\n"
    )
    done = cli(
        "--config",
        str(config),
        "--tenants",
        str(tenants),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
    )
    assert done.returncode == 2
    assert (
        "tenants.0.models.0: unknown model 'huge'" in done.stderr and "Traceback" not in done.stderr
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "10.1.2.3:0"])
def test_the_demo_tenant_is_refused_off_loopback(tmp_path: Path, listen: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("models:\n  - name: small\n    endpoints: ['127.0.0.1:1']\n")
    from devstack.__main__ import DEMO_TENANTS

    done = cli(
        "--config",
        str(config),
        "--tenants",
        str(DEMO_TENANTS),
        "--listen",
        listen,
        "--metrics-listen",
        "",
    )
    assert done.returncode == 2 and "loopback" in done.stderr
