"""Authentication on the gRPC server: a generic, deny-by-default interceptor.

It reads the ``authorization: Bearer <key>`` metadata (the same key the
REST shim forwards), checks it against the method's entry in
``gateway.transport.access`` and puts the authenticated caller into a
context variable for the servicers, which pass it to the domain. It never
reads or writes request or response messages: admission, limits and
metering are the domain service's.

The caller is set in ``intercept_service``, which grpc.aio runs in the
call's own task before the handler: the handler sees it, no other call
does, and the handler is returned unwrapped, so the per-message path gains
nothing. A refused call gets a handler that aborts without deserialising
the request, so a keyless caller cannot make the gateway parse its body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import grpc

from gateway.errors import GatewayError, PermissionDenied, Unauthenticated
from gateway.tenancy.directory import Principal
from gateway.tenancy.keys import bearer_token
from gateway.transport.access import EXEMPT_SERVICES, METHOD_ACCESS, Access, service_of
from gateway.transport.origin import local_only
from gateway.transport.status import to_status

log = logging.getLogger("llmgw.gateway.auth")

_CALLER: ContextVar[Principal | None] = ContextVar("llmgw_caller", default=None)

# Looks a bearer token up: the principal it belongs to, or None.
Authenticate = Callable[[str], Principal | None]


def current_caller() -> Principal | None:
    """The authenticated caller of the current call; None when keys are off."""
    return _CALLER.get()


def authorization(metadata: Any) -> str | None:
    """The ``authorization`` value of invocation metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


def refusal(status: grpc.Status, like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler shaped like ``like`` that ends the call with ``status`` at once,
    without deserialising the request."""
    return _Refusal(status).handler(like)


class _Refusal:
    """Handlers that end a call with one status, without reading its request."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    async def unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(self._status)

    async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(self._status)
        yield  # pragma: no cover - abort raises; this makes an async generator

    def handler(self, like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A handler of the same shape as ``like`` (no request deserialiser: bytes stay bytes)."""
        serialize = like.response_serializer
        if like.request_streaming and like.response_streaming:
            return grpc.stream_stream_rpc_method_handler(self.stream, None, serialize)
        if like.request_streaming:
            return grpc.stream_unary_rpc_method_handler(self.unary, None, serialize)
        if like.response_streaming:
            return grpc.unary_stream_rpc_method_handler(self.stream, None, serialize)
        return grpc.unary_unary_rpc_method_handler(self.unary, None, serialize)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call against ``policies``; refuses methods with no entry.

    ``authenticate`` None runs without keys (no tenant file): methods in the
    table are served to anyone, methods outside it are still refused.
    """

    def __init__(
        self,
        authenticate: Authenticate | None,
        policies: Mapping[str, Access] = METHOD_ACCESS,
        exempt: frozenset[str] = EXEMPT_SERVICES,
    ) -> None:
        self._authenticate = authenticate
        self._policies = policies
        self._exempt = exempt
        self._unlisted_logged: set[str] = set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler if the call may proceed, else one that refuses it."""
        path: str = details.method
        access = self._policies.get(path)
        if access is None:
            handler = await continuation(details)
            if handler is None or service_of(path) in self._exempt:
                return handler  # no such method: grpc answers UNIMPLEMENTED
            return _Refusal(to_status(self._unlisted(path))).handler(handler)
        if access is Access.PUBLIC or self._authenticate is None:
            return await continuation(details)
        try:
            caller = self._caller(details.invocation_metadata)
            if access is Access.ADMIN and not caller.admin:
                raise PermissionDenied("This service needs an admin key.", "admin_key_required")
        except GatewayError as error:
            return await self._refuse(continuation, details, error)
        _CALLER.set(caller)
        handler = await continuation(details)
        if handler is not None and caller.tenant is not None and caller.tenant.demo:
            return local_only(handler)  # a published key: this machine's clients only
        return handler

    def _caller(self, metadata: Any) -> Principal:
        assert self._authenticate is not None
        token = bearer_token(authorization(metadata))
        if token is None:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        caller = self._authenticate(token)
        if caller is None:
            raise Unauthenticated("Incorrect API key provided.")
        return caller

    def _unlisted(self, path: str) -> GatewayError:
        if path not in self._unlisted_logged:  # registered methods only: a bounded set
            self._unlisted_logged.add(path)
            log.error("refused %s: the method has no entry in the access table", path)
        return PermissionDenied("This method is not available.", "method_not_allowed")

    @staticmethod
    async def _refuse(
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
        error: GatewayError,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None  # no such method: grpc answers UNIMPLEMENTED
        return _Refusal(to_status(error)).handler(handler)
