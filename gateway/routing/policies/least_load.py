"""Power of two random choices on the endpoints' load score (the default)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing.endpoint import Endpoint
from gateway.routing.policies.base import PolicySettings, RequestKey


class LeastLoad:
    """Two random candidates, the less loaded wins.

    Picking the global minimum would send every gateway process (each with a
    slightly stale view) to the same replica at once; two random choices
    keep the maximum load low without that herding (Mitzenmacher).
    """

    def __init__(self, settings: PolicySettings) -> None:
        self._rng = settings.rng

    def choose(
        self, candidates: Sequence[Endpoint], pool: Sequence[Endpoint], key: RequestKey
    ) -> Endpoint:
        """The less loaded of two random candidates."""
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        return a if a.score() <= b.score() else b
