"""SIGTERM to a real ``python -m gateway`` meters exactly what every client received.

The in-process drain test (test_drain.py) calls ``RunningGateway.stop``; this
one goes through the path an operator's SIGTERM takes: the worker's signal
handler, the drain with ``--shutdown-grace-s``, the meter's close, the usage
spool (``--usage-spool``) replayed by the next process, and with
``--workers 2`` the parent passing the signal on to its worker. Sidecars run
in this process; Redis is a real redis-server on a free port.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backends.engines.sim import SimConfig, SimEngine
from backends.server import RunningSidecar, start_sidecar
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import free_port, params, wait_until
from tests.integration.test_drain import STREAMS, Received, consume, metered
from tests.redis_server import RedisServer
from tests.tenancy_helpers import tenant, write_tenants

GRACE_S = 2.0
SHORT, LONG = 60, 1000  # tokens: 20 ms each, so a long stream outlives the grace
# Generous: the machine may be busy; what is checked is the outcome, not its speed.
PATIENCE_S = 60.0


@dataclass
class Setup:
    """What every gateway process of one test shares: routing file, tenants, Redis."""

    tmp: Path
    sidecar: RunningSidecar
    config: Path
    tenants: Path
    key: str
    redis: RedisServer

    @property
    def spool(self) -> Path:
        return self.tmp / "spool.jsonl"


@pytest.fixture
async def setup(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Setup]:
    sidecar = await start_sidecar(SimEngine(SimConfig(output_tokens=LONG, itl_ms=20)))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "models:\n  - name: small\n"
        f"    endpoints: ['127.0.0.1:{sidecar.port}']\n"
        f"    max_output_tokens: {LONG}\n"
    )
    tenants = tmp_path / "tenants.yaml"
    keys = write_tenants(tenants, [tenant("acme", concurrent=100)])
    yield Setup(tmp_path, sidecar, config, tenants, keys["acme"], redis_server)
    await sidecar.stop(0)


class GatewayProcess:
    """``python -m gateway`` as an operator runs it, its log in a file (a pipe
    nobody reads could fill and block the process)."""

    def __init__(self, setup: Setup, workers: int = 1) -> None:
        self.setup = setup
        self.port = free_port()
        self.workers = workers
        self.own = [free_port() for _ in range(workers)] if workers > 1 else []
        self.log = setup.tmp / f"gateway-{self.port}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def addresses(self) -> list[str]:
        """Where to reach each worker (its own address), or the one process."""
        return [f"127.0.0.1:{p}" for p in self.own or [self.port]]

    async def start(self) -> GatewayProcess:
        s = self.setup
        args = [
            "--config", str(s.config), "--listen", f"127.0.0.1:{self.port}",
            "--tenants", str(s.tenants), "--redis-url", s.redis.url,
            "--shutdown-grace-s", str(GRACE_S), "--usage-spool", str(s.spool),
            "--metrics-listen", "", "--workers", str(self.workers),
        ]  # fmt: skip
        if self.own:
            args += ["--worker-listen", ",".join(self.addresses)]
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", *args, stdout=log, stderr=log
            )
        for address in self.addresses:
            await self._serving(address)
        return self

    async def _serving(self, address: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE_S
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise AssertionError(f"the gateway exited:\n{self.text()}")
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass  # not listening yet
                if loop.time() > deadline:
                    raise AssertionError(f"the gateway did not serve:\n{self.text()}")
                await asyncio.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def exited(self) -> int:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), PATIENCE_S)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"the gateway did not exit:\n{self.text()}") from None

    async def stop(self) -> None:
        """SIGTERM and wait; it must exit cleanly and lose no usage."""
        self.terminate()
        assert await self.exited() == 0, self.text()
        assert not lost_usage(self.text()), self.text()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


def lost_usage(log: str) -> bool:
    """The gateway logged usage it could not write (to Redis or the spool)."""
    return "dropped" in log or "usage is lost" in log or "cannot be written" in log


async def refused_while_draining(address: str) -> None:
    """After the signal, readiness flips and a new call is refused as retryable."""
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def draining() -> bool:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError:
                return True  # past the grace: no longer listening
            return bool(answer.status == health_pb2.HealthCheckResponse.NOT_SERVING)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE_S
        while not await draining():
            assert loop.time() < deadline, "readiness never flipped after SIGTERM"
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params(max_tokens=1)), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def open_streams(
    gateway: GatewayProcess, key: str
) -> tuple[list[Received], list[asyncio.Task[None]], list[grpc.aio.Channel]]:
    """20 streams spread over the workers' addresses; returns once every one has tokens."""
    channels = [grpc.aio.insecure_channel(a) for a in gateway.addresses]
    received = [Received() for _ in range(STREAMS)]
    # A few short ones may finish inside the grace; the long ones are cut.
    tasks = [
        asyncio.create_task(
            consume(
                pb_grpc.ChatServiceStub(channels[i % len(channels)]),
                key,
                r,
                SHORT if i < 4 else LONG,
            )
        )
        for i, r in enumerate(received)
    ]
    try:
        await wait_until(lambda: all(r.tokens >= 3 for r in received), timeout=PATIENCE_S)
    except AssertionError:
        raise AssertionError(f"streams did not start: {received}\n{gateway.text()}") from None
    return received, tasks, channels


async def sigterm_with_streams(gateway: GatewayProcess, key: str) -> list[Received]:
    """Open the streams, SIGTERM the gateway, read every stream to its end, wait for exit."""
    received, tasks, channels = await open_streams(gateway, key)
    gateway.terminate()
    try:
        for address in gateway.addresses:
            await refused_while_draining(address)
        await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE_S)
        assert await gateway.exited() == 0, gateway.text()
    finally:
        for channel in channels:
            await channel.close()
    return received


def check(received: list[Received], usage: dict[str, int]) -> None:
    """Every stream ended explicitly, and Redis holds per request what its client got."""
    for i, r in enumerate(received):
        if r.finished:
            assert i < 4 and r.tokens == SHORT, r
        else:
            assert (r.code, r.reason) == (grpc.StatusCode.UNAVAILABLE, "gateway_shutting_down"), r
            assert 3 <= r.tokens < LONG, r
    assert sum(not r.finished for r in received) >= STREAMS - 4  # the long ones were cut
    assert usage == {r.request_id: r.tokens for r in received}


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_meters_what_every_stream_sent(setup: Setup, workers: int) -> None:
    gateway = await GatewayProcess(setup, workers).start()
    try:
        received = await sigterm_with_streams(gateway, setup.key)
    finally:
        gateway.kill()
    assert not lost_usage(gateway.text()), gateway.text()
    check(received, await metered(setup.redis))
    assert not setup.spool.exists()  # Redis took everything: nothing spooled


async def test_sigterm_with_redis_down_spools_and_the_next_start_replays_once(
    setup: Setup,
) -> None:
    gateway = await GatewayProcess(setup).start()
    try:
        received, tasks, channels = await open_streams(gateway, setup.key)
        setup.redis.kill()
        gateway.terminate()
        await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE_S)
        assert await gateway.exited() == 0, gateway.text()
        for channel in channels:
            await channel.close()
    finally:
        gateway.kill()
    assert not lost_usage(gateway.text()), gateway.text()
    lines = setup.spool.read_text().splitlines()
    assert len(lines) == STREAMS, gateway.text()
    copy = setup.tmp / "spool.copy"
    shutil.copyfile(setup.spool, copy)

    def replayed() -> bool:
        return not setup.spool.exists() and not list(setup.tmp.glob("spool.jsonl.*"))

    # An empty Redis on the same port: everything it will hold comes from the spool.
    setup.redis.start()
    replayer = await GatewayProcess(setup).start()
    try:
        await wait_until(replayed, PATIENCE_S)
        await replayer.stop()
    finally:
        replayer.kill()
    usage = await metered(setup.redis)
    check(received, usage)

    # The spool again (a crash after writing but before deleting it): counted once.
    shutil.copyfile(copy, setup.spool)
    again = await GatewayProcess(setup).start()
    try:
        await wait_until(replayed, PATIENCE_S)
        await again.stop()
    finally:
        again.kill()
    assert await metered(setup.redis) == usage
