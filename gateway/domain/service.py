"""The chat completion use case: validate, resolve the model, pick an
endpoint, stream the backend's output and guarantee the stream either ends
with a Finished event or raises. No transport code here."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from gateway.domain.chat import ChatRequest, Finished, Generation, StreamEvent
from gateway.domain.errors import BackendFailed
from gateway.domain.ports import BackendPort
from gateway.domain.validation import bind, check_request_shape, resolve_max_tokens
from gateway.routing.registry import ModelRegistry, ModelRoute


def new_completion_id() -> str:
    """An OpenAI-style completion id (also used as the request id downstream)."""
    return "chatcmpl-" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Completion:
    """An admitted request: its id, the model serving it and what to generate."""

    id: str
    model: str
    created: int
    route: ModelRoute
    generation: Generation


@dataclass(frozen=True, slots=True)
class CompletedText:
    """A whole (non-streamed) completion."""

    completion: Completion
    text: str
    finished: Finished


class ChatCompletionService:
    """Admits chat requests and streams their completions from the backends."""

    def __init__(
        self,
        registry: ModelRegistry,
        backends: BackendPort,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_completion_id,
    ) -> None:
        self._registry = registry
        self._backends = backends
        self._clock = clock
        self._new_id = new_id

    @property
    def registry(self) -> ModelRegistry:
        """The models served."""
        return self._registry

    def admit(self, request: ChatRequest) -> Completion:
        """Validate and route ``request``; raise GatewayError if it cannot be served."""
        check_request_shape(request)
        route = self._registry.resolve(request.model)
        max_tokens = resolve_max_tokens(request, route.limits)
        completion_id = self._new_id()
        return Completion(
            id=completion_id,
            model=route.name,
            created=int(self._clock()),
            route=route,
            generation=bind(request, completion_id, route.engine_model, max_tokens),
        )

    async def stream(self, completion: Completion) -> AsyncGenerator[StreamEvent, None]:
        """Yield text deltas, then exactly one Finished. A backend stream that
        ends without Finished raises BackendFailed: never a silent truncation."""
        endpoint = completion.route.pool.pick()
        endpoint.outstanding += 1
        try:
            async with aclosing(
                self._backends.generate(endpoint.address, completion.generation)
            ) as events:
                async for event in events:
                    yield event
                    if type(event) is Finished:
                        return
            raise BackendFailed("the backend ended the stream before the completion finished")
        finally:
            endpoint.outstanding -= 1

    async def complete(self, completion: Completion) -> CompletedText:
        """Run a completion to its end and return the whole text."""
        parts: list[str] = []
        async with aclosing(self.stream(completion)) as events:
            async for event in events:
                if type(event) is str:
                    parts.append(event)
                else:
                    assert isinstance(event, Finished)
                    return CompletedText(completion, "".join(parts), event)
        raise BackendFailed("the backend ended the stream before the completion finished")
