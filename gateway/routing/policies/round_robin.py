"""Each candidate in turn."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.endpoint import Endpoint
from gateway.routing.policies.base import PolicySettings, RequestKey


class RoundRobin:
    """Cycles through the candidates, ignoring load (for equal replicas and
    short requests, or to compare against the load-aware policies)."""

    def __init__(self, settings: PolicySettings) -> None:
        self._next = 0

    def choose(
        self, candidates: Sequence[Endpoint], pool: Sequence[Endpoint], key: RequestKey
    ) -> Endpoint:
        """The next candidate after the previous pick."""
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen
