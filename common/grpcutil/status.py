"""Build and read gRPC statuses that carry google.rpc error details.

Failures travel as a gRPC status with a packed ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer (what grpcio-status does), never as
in-band stream messages. Every status carries an ``ErrorInfo`` whose
``reason`` is a stable machine-readable code (``model_not_found``...).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "llmgw"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request, named in the client's own terms."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota (subject and a human description)."""

    subject: str
    description: str


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """What a failed call tells the client beyond its code and message."""

    reason: str
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: Sequence[FieldViolation] = ()
    quota_violations: Sequence[QuotaViolation] = ()
    retry_after_s: float | None = None


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def build_status(code: grpc.StatusCode, message: str, details: ErrorDetails) -> grpc.Status:
    """Return a grpc.Status whose trailers hold the google.rpc details."""
    proto = status_pb2.Status(code=code.value[0], message=message)
    proto.details.append(
        _pack(
            error_details_pb2.ErrorInfo(
                reason=details.reason, domain=ERROR_DOMAIN, metadata=details.metadata
            )
        )
    )
    if details.field_violations:
        proto.details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in details.field_violations
                    ]
                )
            )
        )
    if details.quota_violations:
        proto.details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in details.quota_violations
                    ]
                )
            )
        )
    if details.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(details.retry_after_s * 1e9))
        proto.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(proto)


@dataclass(frozen=True, slots=True)
class ParsedStatus:
    """The details read back from a failed call's trailers."""

    code: grpc.StatusCode
    message: str
    reason: str | None
    field_violations: tuple[FieldViolation, ...]
    retry_after_s: float | None


def parse_status(error: grpc.aio.AioRpcError) -> ParsedStatus:
    """Read code, message and google.rpc details from a failed call."""
    reason: str | None = None
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    proto = _status_from_trailers(error.trailing_metadata() or ())
    if proto is not None:
        for packed in proto.details:
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                packed.Unpack(info)
                reason = info.reason
            elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                packed.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                packed.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return ParsedStatus(
        code=error.code(),
        message=error.details() or "",
        reason=reason,
        field_violations=tuple(violations),
        retry_after_s=retry_after,
    )


def _status_from_trailers(trailers: Iterable[tuple[str, str | bytes]]) -> status_pb2.Status | None:
    for key, value in trailers:
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY and isinstance(value, bytes):
            proto = status_pb2.Status()
            proto.ParseFromString(value)
            return proto
    return None
