"""Shared fixtures: real gRPC servers on port 0 and the shim over real HTTP."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import uvicorn

from backends.engines.sim import SimConfig, SimEngine
from backends.server import RunningSidecar, start_sidecar
from gateway.config import GatewayConfig
from gateway.server import RunningGateway, start_gateway
from gateway.tenancy.runtime import TenancyOptions
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from rest_shim.settings import ShimSettings
from rest_shim.worker import shim_server

# A well-formed credential for shims in front of a keyless gateway: the shim refuses
# /v1/ calls without one before reading the body; the gateway without tenants ignores it.
ANY_KEY = {"authorization": "Bearer sk-test"}


def _ephemeral_ports() -> range:
    """The range the kernel picks port-0 binds and outgoing connections from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


# Ports for a process to bind later come from below the kernel's ephemeral range.
# Our gRPC servers bind with SO_REUSEPORT, so a port that anything else takes in the
# meantime (any port-0 bind on this machine, which other test runs make all the time)
# is not refused but silently shared: connections then split between two servers.
# Port-0 binds never pick from below the range; the pick is random (not seeded, so
# parallel runs differ) and never repeats within a run.
_EPHEMERAL = _ephemeral_ports()
_OWN_PORTS = range(15000, _EPHEMERAL.start)
_picked: set[int] = set()
_random = random.SystemRandom()


def free_port() -> int:
    """A port nothing listens on now, for a server that binds it later."""
    if len(_OWN_PORTS) >= 1000:
        for _ in range(200):
            port = _random.choice(_OWN_PORTS)
            if port in _picked:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use (listening, or connections in TIME_WAIT)
            _picked.add(port)
            return port
    with socket.socket() as s:  # an unusual port range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user(content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=content)


def params(
    model: str = "small", content: str = "alpha beta gamma", **kw: object
) -> pb.ChatCompletionParams:
    return pb.ChatCompletionParams(model=model, messages=[user(content)], **kw)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll until predicate() holds; return the seconds it took (fail on timeout).

    The default timeout is generous: what a test checks is that the condition
    comes true, and on a loaded machine that can take seconds. How fast is for
    the benchmarks (or a printed figure), not an assertion."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)
    return loop.time() - start


@dataclass
class Deployment:
    """Sidecars (one per model), a gateway and its channel, all in this event loop."""

    engines: dict[str, SimEngine]
    sidecars: list[RunningSidecar]
    gateway: RunningGateway
    channel: grpc.aio.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    @property
    def chat(self) -> pb_grpc.ChatServiceStub:
        return pb_grpc.ChatServiceStub(self.channel)

    @property
    def models(self) -> pb_grpc.ModelServiceStub:
        return pb_grpc.ModelServiceStub(self.channel)

    async def stop(self, *others: RunningSidecar) -> None:
        """Close the channel, stop the gateway, then its sidecars and ``others``."""
        await self.channel.close()
        await self.gateway.stop(0)
        for s in (*self.sidecars, *others):
            await s.stop(0)


async def deploy(
    sims: dict[str, SimConfig],
    extra: Sequence[dict[str, object]] = (),
    tenancy: TenancyOptions | None = None,
    default_max_tokens: int | None = 32,
) -> Deployment:
    engines: dict[str, SimEngine] = {}
    sidecars: list[RunningSidecar] = []
    models: list[dict[str, object]] = []
    for name, sim in sims.items():
        engine = SimEngine(sim)
        sidecar = await start_sidecar(engine)
        engines[name] = engine
        sidecars.append(sidecar)
        models.append(
            {
                "name": name,
                "aliases": [name.split("-")[1]] if "-" in name else [],
                "endpoints": [f"127.0.0.1:{sidecar.port}"],
                "max_output_tokens": 1000,
                "default_max_tokens": default_max_tokens,
            }
        )
    models.extend(extra)
    gateway = await start_gateway(GatewayConfig.model_validate({"models": models}), tenancy=tenancy)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    return Deployment(engines, sidecars, gateway, channel)


async def deploy_with_embedder(
    sims: dict[str, SimConfig], dimensions: int, tenancy: TenancyOptions | None = None
) -> tuple[Deployment, RunningSidecar]:
    """``deploy(sims)`` plus an embedding model, sim-embed (alias embed), on a sidecar
    of its own; stop it with ``Deployment.stop(embedder)``."""
    embedder = await start_sidecar(SimEngine(SimConfig(embedding_dimensions=dimensions)))
    d = await deploy(
        sims,
        extra=[
            {
                "name": "sim-embed",
                "aliases": ["embed"],
                "kind": "embedding",
                "endpoints": [f"127.0.0.1:{embedder.port}"],
            }
        ],
        tenancy=tenancy,
    )
    return d, embedder


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    """Two models: sim-small (fast) and sim-large, on zero-delay sim engines."""
    d = await deploy(
        {
            "sim-small": SimConfig(output_tokens=12),
            "sim-large": SimConfig(output_tokens=20, itl_ms=1),
        }
    )
    yield d
    await d.stop()


@dataclass
class Shim:
    """The REST shim served by uvicorn on a free port, in this event loop."""

    base_url: str
    server: uvicorn.Server


async def start_shim(gateway_address: str, **settings: object) -> tuple[Shim, asyncio.Task[None]]:
    port = free_port()
    settings.setdefault("log_level", "warning")
    # The server a shim process runs (header limits, timeouts, bounded shutdown).
    server = shim_server(ShimSettings(port=port, gateway=gateway_address, **settings))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, timeout=10)
    return Shim(f"http://127.0.0.1:{port}", server), task


@pytest.fixture
async def shim(deployment: Deployment) -> AsyncIterator[Shim]:
    s, task = await start_shim(deployment.address, max_body_bytes=64 * 1024)
    yield s
    s.server.should_exit = True
    await task
