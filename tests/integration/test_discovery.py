"""Backend discovery and routing-file reload under load, on real servers.

Sidecars are real gRPC servers in this process (so their engines can be
watched); the gateway is a real gRPC server too: in this process with a
resolver the test controls (a name whose addresses are 127.0.0.1 and
127.0.0.2, no /etc/hosts needed), and as its own process reloading its
routing file. Streams keep flowing while endpoints join and leave: none may
fail, and the streams of a removed endpoint finish there (it drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml

from backends.engines.sim import SimConfig, SimEngine
from backends.server import RunningSidecar, start_sidecar
from gateway.config import GatewayConfig
from gateway.server import start_gateway
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import free_port, params, wait_until

# A stream lasts ~0.4 s: long enough to be in flight when its endpoint leaves.
STREAMING = SimConfig(ttft_ms=20, itl_ms=20, output_tokens=20)
FAST_HEALTH = {
    "interval_s": 0.1,
    "timeout_s": 1.0,
    "unhealthy_threshold": 3,
    "healthy_threshold": 1,
}


class Resolver:
    """A DNS the test controls: host name -> addresses."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str) -> list[str]:
        if host not in self.table:
            raise OSError(f"{host}: name not known")
        return list(self.table[host])


@dataclass
class Load:
    """Streams sent back to back by ``workers`` clients until stopped."""

    stub: pb_grpc.ChatServiceStub
    workers: int = 6
    ok: Counter[str] = field(default_factory=Counter)  # backend -> completed streams
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _one(self) -> None:
        call = self.stub.StreamChatCompletion(pb.StreamChatCompletionRequest(params=params("m")))
        try:
            kinds = [m.WhichOneof("event") async for m in call]
            backend = str(dict(await call.initial_metadata())["x-llmgw-backend"])
        except grpc.aio.AioRpcError as error:
            self.failures.append(f"{error.code().name}: {error.details()}")
            return
        if kinds[0] != "start" or kinds[-1] != "end":
            self.failures.append(f"incomplete stream {kinds}")
            return
        self.ok[backend] += 1

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self._one()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def total(self) -> int:
        return sum(self.ok.values())


@pytest.fixture
async def sidecars() -> AsyncIterator[list[tuple[SimEngine, RunningSidecar]]]:
    made: list[tuple[SimEngine, RunningSidecar]] = []
    yield made
    for _, sidecar in made:
        await sidecar.stop(0)


async def sidecar_on(
    made: list[tuple[SimEngine, RunningSidecar]], address: str
) -> tuple[SimEngine, RunningSidecar]:
    engine = SimEngine(STREAMING)
    running = await start_sidecar(engine, address)
    made.append((engine, running))
    return engine, running


async def test_a_name_with_many_addresses_is_many_endpoints_and_one_leaving_drains(
    sidecars: list[tuple[SimEngine, RunningSidecar]],
) -> None:
    one, first = await sidecar_on(sidecars, "127.0.0.1:0")
    port = first.port
    two, _ = await sidecar_on(sidecars, f"127.0.0.2:{port}")  # same port, another address
    dns = Resolver({"replicas.test": ["127.0.0.1"]})
    config = GatewayConfig.model_validate(
        {
            "models": [{"name": "m", "endpoints": [f"replicas.test:{port}"]}],
            "resilience": {"health": FAST_HEALTH},
        }
    )
    gateway = await start_gateway(config, resolver=dns)
    pool = gateway.service.registry.resolve("m").pool
    assert [e.address for e in pool.endpoints] == [f"127.0.0.1:{port}"]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    load = Load(pb_grpc.ChatServiceStub(channel))
    try:
        load.start()
        # The name gains an address (a replica scaled up): it becomes an endpoint.
        dns.table["replicas.test"] = ["127.0.0.1", "127.0.0.2"]
        await gateway.routes.refresh()
        assert {e.address for e in pool.endpoints} == {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}
        await wait_until(lambda: load.ok[f"127.0.0.2:{port}"] >= 3, timeout=30)
        # It loses one while streams run there: they finish, nothing new goes there.
        await wait_until(lambda: two.active >= 1, timeout=30)
        dns.table["replicas.test"] = ["127.0.0.1"]
        await gateway.routes.refresh()
        gone = pool.draining[0]
        assert gone.address == f"127.0.0.2:{port}" and gone.outstanding >= 1
        await wait_until(lambda: not pool.draining, timeout=30)  # drained, then reaped
        assert two.active == 0
        received = two.received  # every request routed there before it left has arrived
        served_before = load.ok[f"127.0.0.1:{port}"]
        await wait_until(lambda: load.ok[f"127.0.0.1:{port}"] >= served_before + 6, timeout=30)
        assert two.received == received  # no request reached it after it left
        assert two.aborted == 0  # its streams finished, none was cut
        # A failed resolution keeps the last good addresses.
        del dns.table["replicas.test"]
        await gateway.routes.refresh()
        assert [e.address for e in pool.endpoints] == [f"127.0.0.1:{port}"]
    finally:
        await load.stop()
        await channel.close()
        await gateway.stop(0)
    assert load.failures == []
    assert one.started > 0


async def routing_file(path: Path, addresses: list[str], **model: object) -> None:
    config = {
        "models": [{"name": "m", "endpoints": addresses, **model}],
        "resilience": {"health": FAST_HEALTH},
    }
    staged = path.with_suffix(".new")
    staged.write_text(yaml.safe_dump(config))
    staged.replace(path)  # atomic, as an operator's tooling (or a ConfigMap) does


async def test_routing_file_changes_add_and_remove_backends_under_load_in_a_gateway_process(
    sidecars: list[tuple[SimEngine, RunningSidecar]], tmp_path: Path
) -> None:
    a, sa = await sidecar_on(sidecars, "127.0.0.1:0")
    b, sb = await sidecar_on(sidecars, "127.0.0.1:0")
    addr_a, addr_b = f"127.0.0.1:{sa.port}", f"127.0.0.1:{sb.port}"
    path = tmp_path / "gateway.yaml"
    await routing_file(path, [addr_a])
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(path),
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", "",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    load = Load(pb_grpc.ChatServiceStub(channel))
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
        load.start()
        await wait_until(lambda: load.ok[addr_a] >= 3, timeout=30)
        assert b.received == 0
        # Add B by editing the file: the running gateway picks it up.
        await routing_file(path, [addr_a, addr_b])
        await wait_until(lambda: load.ok[addr_b] >= 3, timeout=30)
        # Remove A while its streams are in flight: they finish, new ones go to B.
        await wait_until(lambda: a.active >= 1, timeout=30)
        await routing_file(path, [addr_b])
        await wait_until(lambda: a.active == 0, timeout=30)
        served_b = load.ok[addr_b]
        await wait_until(lambda: load.ok[addr_b] >= served_b + 6, timeout=30)
        received = a.received  # long after A drained: nothing routed to A is in transit
        served_b = load.ok[addr_b]
        await wait_until(lambda: load.ok[addr_b] >= served_b + 6, timeout=30)
        assert a.received == received  # nothing new reached A
        assert a.aborted == 0  # A's streams were not cut
        # A bad file is refused and logged; the routes in force keep serving.
        path.write_text("models: [{name: m, endpoints: ['not an address']}]\n")
        process.send_signal(signal.SIGHUP)
        served_b = load.ok[addr_b]
        await wait_until(lambda: load.ok[addr_b] >= served_b + 6, timeout=30)
    finally:
        await load.stop()
        await channel.close()
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert load.failures == [], load.failures[:5]
    assert load.total() >= 15
    log = err.decode()
    assert "routing file rejected, still serving the previous routes" in log
    assert "models.0.endpoints" in log  # the problem is named


async def test_a_reload_can_add_a_model_and_change_its_policy(
    sidecars: list[tuple[SimEngine, RunningSidecar]], tmp_path: Path
) -> None:
    _, sa = await sidecar_on(sidecars, "127.0.0.1:0")
    path = tmp_path / "gateway.yaml"
    await routing_file(path, [f"127.0.0.1:{sa.port}"])
    from gateway.config import load_config

    gateway = await start_gateway(load_config(path), routing_file=path)
    try:
        registry = gateway.service.registry
        pool = registry.resolve("m").pool
        config = yaml.safe_load(path.read_text())
        config["models"][0]["lb_policy"] = "prefix_affinity"
        config["models"].append({"name": "n", "endpoints": [f"127.0.0.1:{sa.port}"]})
        path.write_text(yaml.safe_dump(config))
        assert await gateway.routes.reload()
        assert registry.resolve("m").pool is pool  # same pool: in-flight state kept
        assert type(pool.policy).__name__ == "PrefixAffinity"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            reply = await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params("n"))
            )
        assert reply.model == "n"
    finally:
        with contextlib.suppress(Exception):
            await gateway.stop(0)
