"""``GET /v1/models`` and ``GET /v1/models/{model}`` over the gateway's ModelService.

The gateway decides what the caller may see: a model outside the tenant's
list is not listed, and retrieving it is 404 ``model_not_found``.
"""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from starlette.responses import Response

from llmgw.v1 import chat_pb2 as pb
from rest_shim.errors import from_grpc_error
from rest_shim.http import forwarded_metadata, json_response

router = APIRouter()

# Listing and describing models is quick; a slow answer means a sick gateway.
_TIMEOUT_S = 10.0


def model_object(model: pb.Model) -> dict[str, object]:
    """OpenAI's model object."""
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The models the caller may use."""
    try:
        listed = await request.app.state.gateway.models.ListModels(
            pb.ListModelsRequest(), metadata=forwarded_metadata(request), timeout=_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as error:
        raise from_grpc_error(error) from None
    return json_response({"object": "list", "data": [model_object(m) for m in listed.models]})


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> Response:
    """One model by name or alias (names may hold slashes, as Hugging Face ids do)."""
    try:
        answer = await request.app.state.gateway.models.GetModel(
            pb.GetModelRequest(model=model),
            metadata=forwarded_metadata(request),
            timeout=_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as error:
        raise from_grpc_error(error) from None
    return json_response(model_object(answer.model))
