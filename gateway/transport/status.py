"""The one mapping from domain errors to gRPC statuses with google.rpc details."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from common.grpcutil.status import ErrorDetails, FieldViolation, QuotaViolation, build_status
from gateway.errors import ErrorKind, GatewayError
from gateway.tenancy.admission import TenantRateLimited
from gateway.transport.ratelimit import ratelimit_metadata

_CODES = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def grpc_code(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC code of an error kind."""
    return _CODES[kind]


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Sequence[Any]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing)


def to_status(error: GatewayError) -> grpc.Status:
    """A gRPC status carrying ErrorInfo, BadRequest and RetryInfo as they apply;
    a tenant's rate-limit refusal also carries the x-ratelimit-* trailers."""
    status = build_status(
        _CODES[error.kind],
        error.message,
        ErrorDetails(
            reason=error.reason,
            field_violations=tuple(
                FieldViolation(v.field, v.description) for v in error.violations
            ),
            quota_violations=tuple(
                QuotaViolation(q.subject, q.description) for q in error.quota_violations
            ),
            retry_after_s=error.retry_after_s,
        ),
    )
    if isinstance(error, TenantRateLimited):
        status = _Status(
            status.code,
            status.details,
            (*status.trailing_metadata, *ratelimit_metadata(error.decision)),
        )
    return status
