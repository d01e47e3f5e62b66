"""What the domain needs from the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from gateway.domain.accounting import Grant, Spent
from gateway.domain.chat import ChatRequest, FanOut, Generation, StreamEvent
from gateway.domain.embedding import EmbeddingJob, EmbeddingRequest
from gateway.routing.registry import ModelRoute
from gateway.tenancy.directory import Principal


class BackendPort(Protocol):
    """Calls one backend endpoint. Closing the returned iterator cancels the call."""

    def generate(self, address: str, generation: Generation) -> AsyncGenerator[StreamEvent, None]:
        """Stream text deltas then one Finished; raise GatewayError on failure."""
        ...

    def embed(self, address: str, job: EmbeddingJob) -> AsyncGenerator[StreamEvent, None]:
        """Yield one Finished carrying the vectors; raise GatewayError on failure."""
        ...


class AdmissionPort(Protocol):
    """Who may use which model and how much: admits before routing, settles after.

    ``caller`` is whoever the transport authenticated (None when the gateway
    runs without keys). ``admit`` raises a GatewayError to refuse
    (PermissionDenied, RateLimited, LimiterUnavailable); ``settle`` is
    called exactly once per grant, never blocks and never raises.
    """

    async def admit(
        self,
        caller: Principal | None,
        route: ModelRoute,
        request: ChatRequest | EmbeddingRequest | FanOut,
    ) -> Grant:
        """Authorise ``caller`` for ``route`` and reserve what ``request`` may use:
        a fan-out is one request whose reservation covers every choice."""
        ...

    def settle(self, grant: Grant, spent: Spent) -> None:
        """Reconcile the reservation with what was used, and meter it."""
        ...

    def may_list(self, caller: Principal | None) -> Callable[[str], bool]:
        """Which canonical model names ``caller`` may see in a model listing."""
        ...
