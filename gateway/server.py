"""Wires the gateway: registry, backend client, servicers, health, reflection."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from gateway.config import GatewayConfig
from gateway.domain.service import ChatCompletionService
from gateway.routing.build import build_registry
from gateway.transport.backend_client import GrpcBackendClient
from gateway.transport.servicer import ChatServicer, ModelServicer
from grpc_common.server import SERVER_OPTIONS, add_health_and_reflection, mark_serving
from llmgw.v1 import chat_pb2, chat_pb2_grpc

SERVICE_NAMES = tuple(s.full_name for s in chat_pb2.DESCRIPTOR.services_by_name.values())


@dataclass
class RunningGateway:
    """A started gateway: its server, bound port and domain service."""

    server: grpc.aio.Server
    port: int
    service: ChatCompletionService
    backends: GrpcBackendClient

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving and close the backend channels."""
        await self.server.stop(grace)
        await self.backends.close()


async def start_gateway(config: GatewayConfig, address: str = "127.0.0.1:0") -> RunningGateway:
    """Start a gateway serving ``config`` on ``address`` (port 0 picks one)."""
    backends = GrpcBackendClient()
    service = ChatCompletionService(build_registry(config), backends)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(service), server)
    chat_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(service, int(time.time())), server
    )
    health = add_health_and_reflection(server, SERVICE_NAMES)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    await mark_serving(health, SERVICE_NAMES)
    return RunningGateway(server=server, port=port, service=service, backends=backends)
