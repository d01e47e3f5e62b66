"""The operator API: routing state of every model and endpoint."""

from __future__ import annotations

import grpc

from gateway.routing.breaker import BreakerState
from gateway.routing.registry import ModelRegistry
from llmgw.admin.v1 import admin_pb2 as pb
from llmgw.admin.v1 import admin_pb2_grpc as pb_grpc

_BREAKER = {
    BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
}


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Serves AdminService.ListModels from the live registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every model with its queue depth and endpoints."""
        return pb.ListModelsResponse(
            models=[
                pb.ModelStatus(
                    model=route.name,
                    queue_depth=route.pool.queue.depth,
                    fallbacks=list(route.fallbacks),
                    lb_policy=route.pool.policy_name,
                    panic=route.pool.panicking(),
                    endpoints=[
                        pb.EndpointStatus(
                            address=e.address,
                            healthy=e.healthy,
                            breaker_state=_BREAKER[e.breaker.state],
                            outstanding=e.outstanding,
                            engine_running=e.load.running,
                            engine_waiting=e.load.waiting,
                            engine_capacity=e.load.capacity,
                            draining=e.draining,
                        )
                        for e in (*route.pool.endpoints, *route.pool.draining)
                    ],
                )
                for route in self._registry.routes
            ]
        )
