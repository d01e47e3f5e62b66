"""Build and run a sidecar gRPC server around one engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2

from backends.engine import Engine
from backends.metered import sidecar_metrics
from backends.servicer import BackendServicer
from common.batching import StreamLimits
from common.grpcutil.malformed import MalformedRequestInterceptor
from common.grpcutil.server import SERVER_OPTIONS, add_health_and_reflection
from common.grpcutil.tls import ServerTls, add_port
from common.observability.tracing import grpc_server_interceptors
from common.pace import DEFAULT_MAX_HOLD_S, LoopLagPace, PaceSettings
from llmgw.backend.v1 import backend_pb2, backend_pb2_grpc

SERVICE_NAME = backend_pb2.DESCRIPTOR.services_by_name["BackendService"].full_name

# How often the engine's readiness is copied into grpc.health.v1. The engine
# answers ready() from state it keeps itself, so this is cheap.
HEALTH_POLL_S = 0.25
# Shutdown does not wait longer than this for the engine to release its resources.
ENGINE_CLOSE_TIMEOUT_S = 5.0

log = logging.getLogger("llmgw.sidecar")


@dataclass
class RunningSidecar:
    """A started sidecar: its server, the port it bound and its engine."""

    server: grpc.aio.Server
    port: int
    engine: Engine
    health: health.aio.HealthServicer
    health_task: asyncio.Task[None]
    pace: LoopLagPace | None = None

    async def stop(self, grace: float | None = 1.0) -> None:
        """Say NOT_SERVING, refuse new calls, let streams finish for up to ``grace``
        seconds, then end the rest with an error status and release the engine
        (bounded too: an engine that hangs on close is left behind, logged)."""
        self.health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.health_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.pace is not None:
            await self.pace.close()
        try:
            await asyncio.wait_for(self.engine.close(), ENGINE_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error("engine did not close within %ss; exiting anyway", ENGINE_CLOSE_TIMEOUT_S)


async def _set_health(servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await servicer.set(name, status)


async def _follow_engine_health(engine: Engine, servicer: health.aio.HealthServicer) -> None:
    """Mirror engine.ready() into grpc.health.v1 (NOT_SERVING while a backend loads or is down)."""
    serving = engine.ready()
    await _set_health(servicer, serving)
    while True:
        await asyncio.sleep(HEALTH_POLL_S)
        now = engine.ready()
        if now != serving:
            serving = now
            log.info("health: %s", "SERVING" if serving else "NOT_SERVING")
            await _set_health(servicer, serving)


async def start_sidecar(
    engine: Engine,
    address: str = "127.0.0.1:0",
    stream_interval_s: float = 0.0,
    *,
    max_hold_s: float = DEFAULT_MAX_HOLD_S,
    limits: StreamLimits | None = None,
    tls: ServerTls | None = None,
) -> RunningSidecar:
    """Start serving ``engine`` on ``address`` (port 0 picks a free port).

    Streams merge tokens into fewer messages only while this process falls
    behind, holding a message at most ``max_hold_s`` (0: never hold; see
    common.pace), or always by ``stream_interval_s`` when that is set.

    Health starts as the engine's readiness and follows it: an engine whose
    backend is still loading is served (so GetLoad and health answer) but
    reported NOT_SERVING until it is ready.
    """
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[*grpc_server_interceptors(), MalformedRequestInterceptor()],
    )
    pace = None
    if max_hold_s > 0 or stream_interval_s > 0:
        settings = PaceSettings(max_hold_s=max_hold_s, min_hold_s=min(0.010, max_hold_s))
        pace = LoopLagPace(
            settings, floor_s=stream_interval_s, on_step=sidecar_metrics().export_pace
        )
    backend_pb2_grpc.add_BackendServiceServicer_to_server(
        BackendServicer(engine, pace, limits), server
    )
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    port = add_port(server, address, tls)  # TLS, and mTLS with tls.client_ca
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await engine.start()
    await server.start()
    # Set once before returning, so a ready engine is SERVING from the first check.
    await _set_health(health_servicer, engine.ready())
    task = asyncio.create_task(_follow_engine_health(engine, health_servicer), name="health")
    return RunningSidecar(
        server=server,
        port=port,
        engine=engine,
        health=health_servicer,
        health_task=task,
        pace=pace,
    )
