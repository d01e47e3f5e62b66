"""Build and run a sidecar gRPC server around one engine."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from backends.engine import Engine
from backends.servicer import BackendServicer
from grpc_common.server import SERVER_OPTIONS, add_health_and_reflection, mark_serving
from llmgw.backend.v1 import backend_pb2, backend_pb2_grpc

SERVICE_NAME = backend_pb2.DESCRIPTOR.services_by_name["BackendService"].full_name


@dataclass
class RunningSidecar:
    """A started sidecar: its server, the port it bound and its engine."""

    server: grpc.aio.Server
    port: int
    engine: Engine

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, then release the engine."""
        await self.server.stop(grace)
        await self.engine.close()


async def start_sidecar(engine: Engine, address: str = "127.0.0.1:0") -> RunningSidecar:
    """Start serving ``engine`` on ``address`` (port 0 picks a free port)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    backend_pb2_grpc.add_BackendServiceServicer_to_server(BackendServicer(engine), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await engine.start()
    await server.start()
    await mark_serving(health, [SERVICE_NAME])
    return RunningSidecar(server=server, port=port, engine=engine)
