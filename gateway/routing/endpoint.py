"""One backend endpoint as the router sees it: load, health and breaker."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.routing.breaker import CircuitBreaker


@dataclass(slots=True)
class LoadSnapshot:
    """The sidecar's last load report (refreshed in the background)."""

    running: int = 0
    waiting: int = 0
    capacity: int = 0
    kv_cache_usage: float | None = None


@dataclass(slots=True, eq=False)  # identity equality: endpoints go in sets
class Endpoint:
    """A sidecar address with what this gateway process knows about it."""

    address: str
    breaker: CircuitBreaker
    max_inflight: int
    outstanding: int = 0
    healthy: bool = True
    draining: bool = False  # removed from its pool: in-flight requests finish, no new ones
    load: LoadSnapshot = field(default_factory=LoadSnapshot)

    def usable(self) -> bool:
        """Healthy, not draining, and the breaker would let a request through."""
        return self.healthy and not self.draining and self.breaker.would_allow()

    def has_room(self) -> bool:
        """Below this process's in-flight bound for the endpoint."""
        return self.outstanding < self.max_inflight

    def score(self) -> float:
        """Lower is better: our requests in flight plus the engine's own queue,
        relative to the engine's capacity when it reports one."""
        load = self.load
        pressure = self.outstanding + load.waiting
        if load.capacity > 0:
            return pressure / load.capacity + load.running / (load.capacity * 1000)
        return float(pressure)
