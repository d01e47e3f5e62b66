"""Tenancy on the gRPC server: an interceptor around the public services.

It authenticates every call (``authorization: Bearer <key>`` metadata, the
same key the REST shim forwards), then for chat completions authorises the
model and reserves capacity before the servicer runs, and reconciles and
meters when the call ends, however it ends (finished, failed, cancelled).
The servicers stay unaware of tenancy; the routing layer reads the caller's
tenant and priority from ``gateway.tenancy.gate.caller()``.

Rate-limit state travels as metadata named like OpenAI's headers
(``x-ratelimit-limit-requests`` ...): in the initial metadata of an
admitted call (merged with whatever initial metadata the servicer sends)
and in the trailing metadata of a refused one. The shim copies them into
HTTP headers.

The per-token path gains one generator hop and one oneof test per message;
no store call happens between admission and the end of the call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import grpc

from gateway.errors import GatewayError, PermissionDenied
from gateway.limits.ports import Decision
from gateway.metering.model import CANCELLED, ERROR, OK
from gateway.telemetry import gateway_metrics
from gateway.tenancy.gate import REJECTED, TenantGate, TenantRateLimited, Ticket
from gateway.transport.status import to_status
from llmgw.v1 import chat_pb2 as pb

log = logging.getLogger("llmgw.gateway.tenancy")

_CREATE = "/llmgw.v1.ChatService/CreateChatCompletion"
_STREAM = "/llmgw.v1.ChatService/StreamChatCompletion"
_LIST_MODELS = "/llmgw.v1.ModelService/ListModels"
_ADMIN_PREFIX = "/llmgw.admin."
# Initial metadata the servicer sends naming the model and endpoint that served.
_MODEL_KEY = "x-llmgw-model"
_BACKEND_KEY = "x-llmgw-backend"

# Codes of a call the domain refused before serving anything: not metered, fully refunded.
_REFUSED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: ``250ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


def ratelimit_metadata(decision: Decision) -> tuple[tuple[str, str], ...]:
    """The x-ratelimit-* sextet of a decision."""
    r, t = decision.requests, decision.tokens
    return (
        ("x-ratelimit-limit-requests", str(r.limit)),
        ("x-ratelimit-remaining-requests", str(r.remaining)),
        ("x-ratelimit-reset-requests", format_duration(r.reset_s)),
        ("x-ratelimit-limit-tokens", str(t.limit)),
        ("x-ratelimit-remaining-tokens", str(t.remaining)),
        ("x-ratelimit-reset-tokens", format_duration(t.reset_s)),
    )


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The ``authorization`` metadata value of a call, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Sequence[Any]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing)


async def abort(context: grpc.aio.ServicerContext, error: GatewayError) -> None:
    """End the call with ``error``'s status; a rate-limit refusal carries the bucket headers."""
    status = to_status(error)
    if isinstance(error, TenantRateLimited):
        gateway_metrics().rejections.labels(error.tenant_name, error.limit).inc()
        status = _Status(
            status.code,
            status.details,
            (*status.trailing_metadata, *ratelimit_metadata(error.decision)),
        )
    await context.abort_with_status(status)


class _TicketContext:
    """The servicer's context, with our metadata merged into its initial metadata and
    the status it aborts with remembered (to tell a refusal from a failure)."""

    def __init__(self, context: grpc.aio.ServicerContext, ticket: Ticket) -> None:
        self._context = context
        self._ticket = ticket
        self._metadata = ratelimit_metadata(ticket.decision)
        self.sent = False
        self.code: grpc.StatusCode | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.sent = True
        for key, value in metadata:  # what served the call, for the usage event
            if key == _BACKEND_KEY:
                self._ticket.backend = value
            elif key == _MODEL_KEY:
                self._ticket.model = value
        await self._context.send_initial_metadata((*metadata, *self._metadata))

    async def flush(self) -> None:
        if not self.sent:
            self.sent = True
            await self._context.send_initial_metadata(tuple(self._metadata))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> None:
        self.code = code
        await self._context.abort(code, details, trailing)

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.code = status.code
        await self._context.abort_with_status(status)

    def outcome(self, error: BaseException) -> str:
        if isinstance(error, asyncio.CancelledError):
            return CANCELLED
        if self.code in _REFUSED:
            return REJECTED
        if self.code == grpc.StatusCode.CANCELLED:
            return CANCELLED
        return ERROR


def _max_tokens(params: pb.ChatCompletionParams) -> int | None:
    if params.HasField("max_completion_tokens"):
        return params.max_completion_tokens
    if params.HasField("max_tokens"):
        return params.max_tokens
    return None


Behavior = Callable[..., Any]


class TenancyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps the public services' handlers with authentication, limits and metering."""

    def __init__(self, gate: TenantGate) -> None:
        self._gate = gate
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The wrapped handler of the called method (cached per method)."""
        handler = await continuation(details)
        method: str = details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler is None:
            return handler
        h: Any = handler
        if method == _CREATE:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_completion(h.unary_unary),
                h.request_deserializer,
                h.response_serializer,
            )
        if method == _STREAM:
            if not inspect.isasyncgenfunction(h.unary_stream):
                raise TypeError("StreamChatCompletion must be an async generator")
            return grpc.unary_stream_rpc_method_handler(
                self._stream_completion(h.unary_stream),
                h.request_deserializer,
                h.response_serializer,
            )
        if method == _LIST_MODELS:
            return grpc.unary_unary_rpc_method_handler(
                self._list_models(h.unary_unary), h.request_deserializer, h.response_serializer
            )
        if method.startswith(_ADMIN_PREFIX) and h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._admin_only(h.unary_unary), h.request_deserializer, h.response_serializer
            )
        return handler

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> Ticket | None:
        gate = self._gate
        try:
            principal = gate.authenticate(authorization(context))
            gate.enter(principal)
            params = request.params
            return await gate.admit(
                principal,
                params.model,
                [len(m.content) for m in params.messages],
                _max_tokens(params),
            )
        except GatewayError as error:
            await abort(context, error)
            raise AssertionError("unreachable") from None  # abort raises

    def _unary_completion(self, inner: Behavior) -> Behavior:
        gate = self._gate

        async def behavior(request: pb.CreateChatCompletionRequest, context: Any) -> Any:
            ticket = await self._admit(request, context)
            if ticket is None:  # unknown model: the servicer answers NOT_FOUND
                return await inner(request, context)
            proxy = _TicketContext(context, ticket)
            outcome = ERROR
            try:
                response = await inner(request, proxy)
                ticket.request_id = response.id
                ticket.usage = (response.usage.prompt_tokens, response.usage.completion_tokens)
                outcome = OK
                await proxy.flush()
                return response
            except BaseException as error:
                if outcome != OK:  # a failure after the end changes nothing served
                    outcome = proxy.outcome(error)
                raise
            finally:
                gate.finish(ticket, outcome)

        return behavior

    def _stream_completion(self, inner: Behavior) -> Behavior:
        gate = self._gate

        async def behavior(
            request: pb.StreamChatCompletionRequest, context: Any
        ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
            ticket = await self._admit(request, context)
            if ticket is None:
                async with aclosing(inner(request, context)) as messages:
                    async for message in messages:
                        yield message
                return
            # Reconciliation needs the real usage even when the client did not ask for it.
            wants_usage = request.include_usage
            request.include_usage = True
            proxy = _TicketContext(context, ticket)
            outcome = ERROR
            chars = 0
            try:
                async with aclosing(inner(request, proxy)) as messages:
                    async for message in messages:
                        kind = message.WhichOneof("event")
                        if kind == "delta":
                            chars += len(message.delta.content)
                        elif kind == "start":
                            ticket.request_id = message.start.id
                            ticket.first_mono = time.monotonic()
                            await proxy.flush()
                        elif kind == "end":
                            usage = message.end.usage
                            ticket.usage = (usage.prompt_tokens, usage.completion_tokens)
                            outcome = OK
                            if not wants_usage:
                                message.end.ClearField("usage")
                        yield message
            except BaseException as error:
                if outcome != OK:  # a failure after the end changes nothing served
                    outcome = proxy.outcome(error)
                raise
            finally:
                ticket.streamed_chars = chars
                gate.finish(ticket, outcome)

        return behavior

    def _list_models(self, inner: Behavior) -> Behavior:
        gate = self._gate

        async def behavior(request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
            try:
                principal = gate.authenticate(authorization(context))
            except GatewayError as error:
                await abort(context, error)
                raise
            listed: pb.ListModelsResponse = await inner(request, context)
            visible = gate.visible_models(principal)
            return pb.ListModelsResponse(models=[m for m in listed.models if visible(m.id)])

        return behavior

    def _admin_only(self, inner: Behavior) -> Behavior:
        gate = self._gate

        async def behavior(request: Any, context: Any) -> Any:
            try:
                principal = gate.authenticate(authorization(context))
                if not principal.admin:
                    raise PermissionDenied("This service needs an admin key.", "admin_key_required")
            except GatewayError as error:
                await abort(context, error)
                raise
            return await inner(request, context)

        return behavior
