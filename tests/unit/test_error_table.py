from __future__ import annotations

import grpc
import pytest

from common.grpcutil.status import ErrorDetails, FieldViolation, build_status
from rest_shim.errors import GRPC_TO_HTTP, from_grpc_error


def failed_call(code: grpc.StatusCode, message: str, details: ErrorDetails) -> grpc.aio.AioRpcError:
    status = build_status(code, message, details)
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), details=message
    )


@pytest.mark.parametrize(
    ("code", "http", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
        (grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
        (grpc.StatusCode.INTERNAL, 500, "server_error"),
        (grpc.StatusCode.DATA_LOSS, 500, "server_error"),
    ],
)
def test_grpc_codes_map_to_http_and_openai_types(
    code: grpc.StatusCode, http: int, kind: str
) -> None:
    error = from_grpc_error(failed_call(code, "boom", ErrorDetails(reason="some_reason")))
    assert (error.status, error.type, error.code, error.message) == (
        http,
        kind,
        "some_reason",
        "boom",
    )


def test_details_become_param_and_retry_after() -> None:
    error = from_grpc_error(
        failed_call(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            ErrorDetails(
                reason="rate_limit_exceeded",
                field_violations=(FieldViolation("max_tokens", "too big"),),
                retry_after_s=2.2,
            ),
        )
    )
    assert error.param == "max_tokens"
    assert error.headers() == {"retry-after": "3"}
    assert error.body().startswith(b'{"error":{"message":"slow down"')


def test_unreachable_gateway_hides_transport_details() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="failed to connect to all addresses; 10.0.0.1:50051",
    )
    error = from_grpc_error(bare)
    assert error.status == 503 and "10.0.0.1" not in error.message


def test_table_has_no_success_code() -> None:
    assert grpc.StatusCode.OK not in GRPC_TO_HTTP
