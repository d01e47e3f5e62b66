"""x-request-id on every response, the same id in the gateway's logs and traces.

The client's own ``x-request-id`` is echoed when it is a sane token;
otherwise one is generated (``req_`` and 24 hex digits, as OpenAI's look).
It travels to the gateway as gRPC metadata, so the gateway's access line
and spans carry it next to the completion id.
"""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id() -> str:
    """A fresh request id."""
    return "req_" + secrets.token_hex(12)


def request_id_of(scope: Scope) -> str:
    """The request's id (set by RequestIdMiddleware; generated if it did not run)."""
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if request_id is None:
        request_id = state["request_id"] = new_request_id()
    return str(request_id)


def header(scope: Scope) -> tuple[bytes, bytes]:
    """The raw ASGI header for this request's id."""
    return (b"x-request-id", request_id_of(scope).encode())


class RequestIdMiddleware:
    """Chooses the request id and adds it to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Set ``scope["state"]["request_id"]``; tag the response (every one: the
        auth guard's refusals too) unless it carries the header already."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        text = given.decode("latin-1") if given is not None else ""
        scope.setdefault("state", {})["request_id"] = (
            text if _VALID.match(text) else new_request_id()
        )
        tag = header(scope)

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append(tag)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, tagging_send)
