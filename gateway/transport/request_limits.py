"""Cap the number of items in a request's lists before any per-item work.

A ChatCompletionParams with 500,000 messages decodes in C in a few tens of
milliseconds, but converting it to domain objects, validating it and
estimating its prompt (all on the event loop) froze every other stream for
seconds. This interceptor runs before authentication and admission and
looks only at list lengths (O(1) each): a repeated message or string field,
at the top of the request or inside a singular sub-message such as
``params``, longer than ``max_items`` is INVALID_ARGUMENT naming the field.

Repeated numbers (token ids) are not capped: they decode as one packed
array and cost no per-item Python work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from common.grpcutil.status import ErrorDetails, FieldViolation, build_status

_CAPPED_TYPES = frozenset({FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING})


def oversized_list(message: Message, max_items: int, depth: int = 2) -> tuple[str, int] | None:
    """The first (field path, length) of a list longer than ``max_items``, or None."""
    for field, value in message.ListFields():
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue
            if field.type in _CAPPED_TYPES and len(value) > max_items:
                return field.name, len(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth > 1:
            found = oversized_list(value, max_items, depth - 1)
            if found is not None:
                return f"{field.name}.{found[0]}", found[1]
    return None


def _status(path: str, length: int, max_items: int) -> grpc.Status:
    # The client's own field name (OpenAI's, for params.messages: "messages").
    name = path.removeprefix("params.")
    return build_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Invalid '{name}': array too long. Expected an array with maximum length "
        f"{max_items}, but got an array with length {length} instead.",
        ErrorDetails(
            reason="array_above_max_length",
            field_violations=(FieldViolation(name, f"at most {max_items} items"),),
        ),
    )


class RequestLimitsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses over-long lists in the requests of the services named, before admission."""

    def __init__(self, services: tuple[str, ...], max_items: int) -> None:
        self._prefixes = tuple(f"/{s}/" for s in services)
        self._max = max_items
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The handler, checking list lengths first (cached per method)."""
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.request_streaming or not method.startswith(self._prefixes):
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        h: Any = handler
        max_items = self._max

        async def refuse_if_oversized(request: Any, context: grpc.aio.ServicerContext) -> None:
            if isinstance(request, Message):
                found = oversized_list(request, max_items)
                if found is not None:
                    await context.abort_with_status(_status(*found, max_items))

        if h.unary_unary is not None:
            inner = h.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await refuse_if_oversized(request, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, h.request_deserializer, h.response_serializer
            )
        if h.unary_stream is not None:
            inner_stream = h.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await refuse_if_oversized(request, context)
                async for message in inner_stream(request, context):
                    yield message

            return grpc.unary_stream_rpc_method_handler(
                stream, h.request_deserializer, h.response_serializer
            )
        return handler
