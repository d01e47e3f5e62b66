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
from streamutil.batching import batched


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
        ends without Finished raises BackendFailed: never a silent truncation.

        Deltas that arrive while our client is still being sent the previous
        one are merged (streamutil.batching): a slow client or a busy CPU
        then costs fewer, larger messages instead of a growing backlog.
        """
        endpoint = completion.route.pool.pick()
        endpoint.outstanding += 1
        try:
            events = self._backends.generate(endpoint.address, completion.generation)
            async with aclosing(batched(events)) as batches:
                async for batch in batches:
                    # A batch is deltas, possibly followed by the Finished event.
                    end = batch[-1] if type(batch[-1]) is Finished else None
                    texts = batch[:-1] if end is not None else batch
                    if texts:
                        yield texts[0] if len(texts) == 1 else "".join(texts)  # type: ignore[arg-type]
                    if end is not None:
                        yield end
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
