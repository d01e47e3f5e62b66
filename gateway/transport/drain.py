"""Refuses new calls while the gateway drains, with a status clients retry.

grpc.aio's own ``Server.stop`` answers calls that arrive after it began with
CANCELLED, which clients do not retry; so the gateway keeps serving during
its drain grace and this interceptor answers every new call (health and
reflection excepted) with UNAVAILABLE and RetryInfo until the server stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from gateway.errors import ShuttingDown
from gateway.transport.access import EXEMPT_SERVICES, service_of
from gateway.transport.auth import refusal
from gateway.transport.status import to_status


class DrainInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Passes calls through until ``close``; then refuses them (UNAVAILABLE)."""

    def __init__(self) -> None:
        self.closed = False
        self._status = to_status(
            ShuttingDown("The gateway is shutting down. Please retry.", retry_after_s=1.0)
        )

    def close(self) -> None:
        """Refuse every new call from now on."""
        self.closed = True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler, or once closed one that refuses the call."""
        handler = await continuation(details)
        if not self.closed or handler is None or service_of(details.method) in EXEMPT_SERVICES:
            return handler
        return refusal(self._status, handler)
