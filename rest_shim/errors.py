"""OpenAI-shaped errors, and the one table from gRPC status to HTTP status.

The shim holds no policy: every error a client sees either comes from the
gateway as a gRPC status (mapped here, once) or is a malformed HTTP request
the shim cannot even translate.
"""

from __future__ import annotations

import math

import grpc
import orjson

from common.grpcutil.status import parse_status


class ApiError(Exception):
    """An error answered to a REST client as OpenAI error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        self.extra_headers = extra_headers or {}

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable with all its fields (bodies are decoded in worker processes).
        return (
            ApiError,
            (
                self.status,
                self.message,
                self.type,
                self.param,
                self.code,
                self.retry_after_s,
                self.extra_headers,
            ),
        )

    def body(self) -> bytes:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def headers(self) -> dict[str, str]:
        """Retry-After (whole seconds, rounded up) when the gateway sent RetryInfo,
        and the gateway's x-ratelimit-* headers."""
        if self.retry_after_s is None:
            return dict(self.extra_headers)
        return {**self.extra_headers, "retry-after": str(max(1, math.ceil(self.retry_after_s)))}


# gRPC code -> (HTTP status, OpenAI error type). The only such table.
GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "request_cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
_DEFAULT = (500, "server_error")

# Reasons that say nothing beyond the type are not echoed as OpenAI's `code`.
_GENERIC_REASONS = frozenset({"invalid_request", "internal_error"})


def from_grpc_error(error: grpc.aio.AioRpcError) -> ApiError:
    """Translate a failed gateway call into the error the REST client sees."""
    parsed = parse_status(error)
    status, error_type = GRPC_TO_HTTP.get(parsed.code, _DEFAULT)
    if parsed.code == grpc.StatusCode.UNAVAILABLE and parsed.reason is None:
        # No details: the gateway itself is unreachable; do not echo transport internals.
        message = "The gateway is unavailable. Please retry."
    else:
        message = parsed.message or "The server had an error while processing your request."
    param = parsed.field_violations[0].field if parsed.field_violations else None
    code = parsed.reason if parsed.reason not in _GENERIC_REASONS else None
    limits = {
        key: value
        for key, value in error.trailing_metadata() or ()
        if key.startswith("x-ratelimit-") and isinstance(value, str)
    }
    return ApiError(status, message, error_type, param, code, parsed.retry_after_s, limits)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 the shim answers itself (the body could not be translated)."""
    return ApiError(400, message, "invalid_request_error", param, code)
