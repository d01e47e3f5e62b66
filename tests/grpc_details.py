"""The google.rpc details of a failed gRPC call, unpacked by type, for assertions."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

_KINDS = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
)


def rpc_details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """Type name ("ErrorInfo", "BadRequest", "QuotaFailure", "RetryInfo") -> the
    unpacked detail; empty when the status carries no details at all (a cut
    connection, say), so a test's ``["ErrorInfo"]`` fails with the name missing."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    out: dict[str, object] = {}
    if raw is None:
        return out
    for packed in status_pb2.Status.FromString(raw).details:
        for kind in _KINDS:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                out[kind.__name__] = message
    return out
