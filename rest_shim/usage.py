"""``GET /v1/usage``: metered usage through the gateway's UsageService.

Query parameters (all optional): ``granularity`` (``day`` or ``hour``),
``start_time`` and ``end_time`` (unix seconds; the default is the last
seven days), ``tenant`` (admin keys only) and ``model``. The caller's
``Authorization`` header is forwarded; the gateway decides what it may see.
"""

from __future__ import annotations

import grpc
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from llmgw.v1 import usage_pb2 as pb
from llmgw.v1 import usage_pb2_grpc as pb_grpc
from rest_shim.auth_guard import gateway_metadata
from rest_shim.errors import from_grpc_error, invalid_request

router = APIRouter()

_GRANULARITY = {"day": pb.GRANULARITY_DAY, "hour": pb.GRANULARITY_HOUR}
_NAMES = {pb.GRANULARITY_DAY: "day", pb.GRANULARITY_HOUR: "hour"}


_INT64_MAX = 2**63 - 1


def _int_param(request: Request, name: str) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return 0
    # isascii: str.isdigit() also accepts digits like "²" that int() refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) > _INT64_MAX:
        raise invalid_request(
            f"'{name}' must be unix seconds (a non-negative integer).", param=name
        )
    return int(value)


@router.get("/v1/usage")
async def get_usage(request: Request) -> Response:
    """Usage counters per tenant, model and period."""
    granularity = request.query_params.get("granularity", "day")
    if granularity not in _GRANULARITY:
        raise invalid_request("'granularity' must be 'day' or 'hour'.", param="granularity")
    usage_request = pb.GetUsageRequest(
        tenant=request.query_params.get("tenant", ""),
        granularity=_GRANULARITY[granularity],
        start_time=_int_param(request, "start_time"),
        end_time=_int_param(request, "end_time"),
        model=request.query_params.get("model", ""),
    )
    metadata = gateway_metadata(request)
    stub = pb_grpc.UsageServiceStub(request.app.state.gateway.channel)
    try:
        answer = await stub.GetUsage(usage_request, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        raise from_grpc_error(error) from None
    return Response(
        orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "object": "usage.record",
                        "tenant": r.tenant,
                        "model": r.model,
                        "granularity": _NAMES.get(r.granularity, "day"),
                        "period_start": r.period_start,
                        "requests": r.requests,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "total_tokens": r.total_tokens,
                        "errors": r.errors,
                        "cancelled": r.cancelled,
                    }
                    for r in answer.records
                ],
            }
        ),
        media_type="application/json",
    )
