"""In-memory usage store for the single-process embedded default."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence

from gateway.metering.model import COUNTERS, Granularity, UsageEvent, UsageRecord


class InMemoryUsageStore:
    """Counters in dicts; the event log is a bounded deque."""

    def __init__(self, keep_events: int = 100_000) -> None:
        self._counters: dict[tuple[str, Granularity, str, str], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(COUNTERS, 0)
        )
        self._seen: set[str] = set()
        self.events: deque[UsageEvent] = deque(maxlen=keep_events)

    async def record(self, events: Sequence[UsageEvent]) -> None:
        """See UsageStore.record."""
        for event in events:
            if event.request_id in self._seen:
                continue
            self._seen.add(event.request_id)
            self.events.append(event)
            for granularity in Granularity:
                key = (event.tenant, granularity, granularity.key(event.started_at), event.model)
                counters = self._counters[key]
                for name, value in event.counters().items():
                    counters[name] += value

    async def query(
        self,
        tenants: Sequence[str],
        granularity: Granularity,
        start_s: float,
        end_s: float,
        model: str | None = None,
    ) -> list[UsageRecord]:
        """See UsageStore.query."""
        wanted = set(tenants)
        periods = dict(granularity.periods(start_s, end_s))
        rows = [
            UsageRecord(tenant, m, g, periods[period], **counters)
            for (tenant, g, period, m), counters in self._counters.items()
            if tenant in wanted and g is granularity and period in periods
            and (model is None or m == model)
        ]  # fmt: skip
        return sorted(rows, key=lambda r: (r.tenant, r.period_start, r.model))

    async def close(self) -> None:
        """Nothing to release."""
