"""Answer a request that is not a valid protobuf with INVALID_ARGUMENT.

grpcio reports a failing request deserializer as UNKNOWN with the Python
exception's class and message (``Unexpected <class
'google.protobuf.message.DecodeError'>``): the wrong code, and internals in
the message. This interceptor wraps the deserializer of every unary-request
handler so that a decode error yields a marker, and the handler answers the
marker with INVALID_ARGUMENT and a ``BadRequest`` detail instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from common.grpcutil.status import ErrorDetails, FieldViolation, build_status

_MALFORMED_STATUS = build_status(
    grpc.StatusCode.INVALID_ARGUMENT,
    "The request is not a valid protobuf message of the method's request type.",
    ErrorDetails(
        reason="malformed_request",
        field_violations=(FieldViolation("request", "not a valid protobuf message"),),
    ),
)


class _Malformed:
    """Stands in for a request whose bytes did not decode."""


MALFORMED = _Malformed()


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return MALFORMED

    return deserialize


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await context.abort_with_status(_MALFORMED_STATUS)
        return await behavior(request, context)

    return guarded


def _stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await context.abort_with_status(_MALFORMED_STATUS)
        # aclosing: closing this stream closes the handler's at once (its cleanup,
        # a backend call's cancel), not when the garbage collector gets to it.
        async with aclosing(behavior(request, context)) as messages:
            async for message in messages:
                yield message

    return guarded


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Outermost server interceptor: undecodable requests become INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The handler with a deserializer that cannot raise (cached per method)."""
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        cached = self._cache.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        h: Any = handler
        deserializer = _safe(h.request_deserializer)
        wrapped: grpc.RpcMethodHandler
        if h.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                _unary(h.unary_unary), deserializer, h.response_serializer
            )
        elif h.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                _stream(h.unary_stream), deserializer, h.response_serializer
            )
        else:
            return handler
        self._cache[details.method] = (handler, wrapped)
        return wrapped
