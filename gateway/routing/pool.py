"""A pool of backend endpoints serving one model, picked by outstanding requests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Endpoint:
    """One sidecar address and the requests this process has in flight on it."""

    address: str
    outstanding: int = 0


class EndpointPool:
    """Replicas of one model. ``pick`` prefers the endpoint with the fewest
    requests in flight (power of two random choices, so ties and many
    gateway processes do not herd onto one replica)."""

    def __init__(self, addresses: Sequence[str], rng: random.Random | None = None) -> None:
        if not addresses:
            raise ValueError("a pool needs at least one endpoint")
        self.endpoints = [Endpoint(a) for a in addresses]
        self._rng = rng or random.Random()

    def pick(self) -> Endpoint:
        """Choose the endpoint for the next request."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = self._rng.sample(endpoints, 2)
        return a if a.outstanding <= b.outstanding else b
