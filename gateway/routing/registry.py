"""Resolves a requested model name or alias to its route."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import ModelNotFound
from gateway.routing.limits import OutputLimits
from gateway.routing.pool import EndpointPool


class ModelKind(enum.StrEnum):
    """What a model serves: text generation (chat and completions) or embeddings."""

    CHAT = "chat"
    EMBEDDING = "embedding"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """Where and how one model is served."""

    name: str
    aliases: Sequence[str]
    engine_model: str
    owned_by: str
    limits: OutputLimits
    pool: EndpointPool
    fallbacks: Sequence[str] = ()
    kind: ModelKind = ModelKind.CHAT


class ModelRegistry:
    """Every model the gateway serves, by name and by alias.

    ``replace`` swaps the whole table at once (a routing-file reload); a
    request already routed keeps the route object it resolved.
    """

    def __init__(self, routes: Iterable[ModelRoute]) -> None:
        self._routes: list[ModelRoute] = []
        self._by_name: dict[str, ModelRoute] = {}
        self.replace(routes)

    def replace(self, routes: Iterable[ModelRoute]) -> None:
        """Serve ``routes`` from now on, instead of the current ones."""
        table = list(routes)
        by_name: dict[str, ModelRoute] = {}
        for route in table:
            for name in (route.name, *route.aliases):
                by_name[name] = route
        self._routes, self._by_name = table, by_name

    def resolve(self, name: str) -> ModelRoute:
        """The route for ``name``; ModelNotFound if there is none."""
        route = self._by_name.get(name)
        if route is None:
            raise ModelNotFound(name)
        return route

    def chain(self, route: ModelRoute) -> list[ModelRoute]:
        """The route followed by its fallbacks, in the configured order."""
        return [route, *(self._by_name[name] for name in route.fallbacks)]

    @property
    def routes(self) -> Sequence[ModelRoute]:
        """All routes, in configuration order."""
        return self._routes
