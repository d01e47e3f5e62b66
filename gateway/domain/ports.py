"""What the domain needs from the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from gateway.domain.chat import Generation, StreamEvent


class BackendPort(Protocol):
    """Calls one backend endpoint. Closing the returned iterator cancels the call."""

    def generate(self, address: str, generation: Generation) -> AsyncGenerator[StreamEvent, None]:
        """Stream text deltas then one Finished; raise GatewayError on failure."""
        ...
