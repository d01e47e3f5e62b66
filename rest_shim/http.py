"""Small HTTP helpers every route module of the shim uses."""

from __future__ import annotations

import orjson
from fastapi import Request
from starlette.responses import Response

from rest_shim.auth_guard import gateway_metadata
from rest_shim.errors import ApiError
from rest_shim.request_id import request_id_of

# Headers forwarded to the gateway as gRPC metadata besides the credential
# (x-session-id keeps a conversation on one replica for its prefix cache).
FORWARDED_HEADERS = ("x-session-id",)


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes of body; 413 beyond, before reading it all."""
    declared = request.headers.get("content-length")
    too_large = ApiError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        "invalid_request_error",
        code="request_too_large",
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(data: object, status_code: int = 200) -> Response:
    """JSON via orjson (FastAPI's own encoder is not needed for these fixed shapes)."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def forwarded_metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """The credential, the other forwarded headers that gRPC metadata can carry, and
    the request id (the gateway logs it)."""
    forwarded = tuple(
        (h, v)
        for h in FORWARDED_HEADERS
        if (v := request.headers.get(h)) is not None and v.isascii() and v.isprintable()
    )
    request_id = ("x-request-id", request_id_of(request.scope))
    return (*gateway_metadata(request), *forwarded, request_id)
