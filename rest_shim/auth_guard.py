"""Refuse API calls without a well-formed credential before their body is read.

The gateway decides whether a key is valid; the shim only checks that one
is *there* and shaped like a token, so that a caller without one costs a
header scan, not a JSON parse and a pydantic object per message (a keyless
flood of many-message bodies used to stall every other stream on the loop).

Accepted: ``Authorization: Bearer <token>`` (the OpenAI SDKs) or
``api-key: <token>`` (Azure OpenAI's header), where the token is an RFC 6750
``b64token`` of at most ``max_bytes`` bytes. Anything else, including a
header that is not ASCII, is a 401 in OpenAI's error shape, sent with
``connection: close`` when a body may follow, so the server stops reading it.

The credential found is left in ``scope["state"]`` and forwarded to the
gateway as ``authorization: Bearer <token>`` whichever header carried it.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from rest_shim.errors import ApiError

# The HTTP client's address, always set by the shim (never copied from a client header).
CLIENT_ADDRESS_KEY = "x-llmgw-client-address"

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")
STATE_KEY = "llmgw_credential"
DEFAULT_MAX_BYTES = 512

MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
MALFORMED = (
    "Malformed API key: send it as 'Authorization: Bearer YOUR_KEY' (letters, digits and "
    "-._~+/ only)."
)


def credential(headers: list[tuple[bytes, bytes]], max_bytes: int) -> str | ApiError:
    """The bearer token of a request's raw headers, or the 401 to answer."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            match = _BEARER.fullmatch(value)
            if match is None:
                return _unauthenticated(MALFORMED)
            found = match.group(1)
            break
        if name == b"api-key":
            stripped = value.strip()
            if _TOKEN.fullmatch(stripped) is None:
                return _unauthenticated(MALFORMED)
            found = stripped
    if found is None:
        return _unauthenticated(MISSING)
    if len(found) > max_bytes:
        return _unauthenticated(f"Malformed API key: longer than {max_bytes} bytes.")
    return found.decode("ascii")


def _unauthenticated(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        "authentication_error",  # as the gateway's own 401s read through errors.GRPC_TO_HTTP
        code="invalid_api_key",
        extra_headers={"www-authenticate": "Bearer"},
    )


def forwarded_credential(scope: Scope) -> str | None:
    """The token the guard accepted for this request (None when the guard is off)."""
    state: dict[str, Any] = scope.get("state") or {}
    value = state.get(STATE_KEY)
    return value if isinstance(value, str) else None


def gateway_metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the caller's credential and address to the gateway.

    With the guard on, the token it accepted (from either header). With it
    off, the ``Authorization`` header as sent, if it is printable ASCII (gRPC
    metadata cannot carry anything else; the gateway then answers 401).
    """
    origin = (CLIENT_ADDRESS_KEY, _client_host(request.scope))
    token = forwarded_credential(request.scope)
    if token is not None:
        return (("authorization", f"Bearer {token}"), origin)
    value = request.headers.get("authorization")
    if value is None or not (value.isascii() and value.isprintable()):
        return (origin,)
    return (("authorization", value), origin)


def _client_host(scope: Scope) -> str:
    # The HTTP peer (or, from a trusted local proxy, its X-Forwarded-For): the gateway
    # serves the published demo key only when this is loopback (gateway/transport/origin.py).
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _may_have_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class AuthGuard:
    """Pure ASGI middleware: every path under ``/v1/`` needs a credential-shaped header."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 at once, or record the credential and pass the request on."""
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        found = credential(headers, self.max_bytes)
        if isinstance(found, ApiError):
            await _refuse(send, found, close=_may_have_body(headers))
            return
        scope.setdefault("state", {})[STATE_KEY] = found
        await self.app(scope, receive, send)


async def _refuse(send: Send, error: ApiError, close: bool) -> None:
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers.extend((k.encode(), v.encode()) for k, v in error.headers().items())
    if close:
        # Do not read (or make the client send) a body nobody will look at.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
