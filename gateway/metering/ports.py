"""What metering needs from a store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.metering.model import Granularity, UsageEvent, UsageRecord


class UsageStore(Protocol):
    """Counters per tenant/model/hour/day and a durable event log.

    ``record`` is idempotent per request id: a batch retried after a timeout
    that in fact succeeded counts nothing twice. Raises
    ``gateway.limits.ports.StoreUnavailable`` when the store cannot be reached.
    """

    async def record(self, events: Sequence[UsageEvent]) -> None:
        """Add the events to the counters and append them to the event log."""
        ...

    async def query(
        self,
        tenants: Sequence[str],
        granularity: Granularity,
        start_s: float,
        end_s: float,
        model: str | None = None,
    ) -> list[UsageRecord]:
        """Counters of ``tenants`` for the periods overlapping [start_s, end_s]."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
