"""``POST /v1/embeddings`` over the gateway's EmbeddingService.

``encoding_format: base64`` is OpenAI's: the little-endian float32 bytes of
each vector, base64-encoded (what the official SDK asks for by default and
decodes itself); ``float`` is a JSON array.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Sequence
from typing import Literal

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from llmgw.v1 import embeddings_pb2 as pb
from rest_shim.asgi_responses import UnaryResponse
from rest_shim.errors import invalid_request
from rest_shim.http import forwarded_metadata, read_body
from rest_shim.parsing import INT32, Strict, clamp_int32, parse_json_object, validate
from rest_shim.request_limits import RequestLimits

router = APIRouter()

_LITTLE_ENDIAN = array("f").itemsize == 4 and int.from_bytes(b"\x01\x00", "little") == 1


class EmbeddingBody(Strict):
    """The parameters of POST /v1/embeddings."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def decode_embedding(
    raw: bytes, limits: RequestLimits
) -> tuple[EmbeddingBody, pb.CreateEmbeddingRequest]:
    """An embeddings body, parsed and translated (raises ApiError); module-level so that
    the shim's BodyDecoder can run it in a worker process for large bodies. Input
    counts are capped by the gateway (a list of token ids decodes as one array)."""
    body = parse_embedding(raw)
    return body, to_embedding_request(body)


def parse_embedding(raw: bytes) -> EmbeddingBody:
    """Decode and type-check a body; raise ApiError (400) naming the problem."""
    data = parse_json_object(raw)
    for key in data:
        if key not in EmbeddingBody.model_fields:
            raise invalid_request(f"Unrecognized request argument supplied: {key}", param=key)
    return validate(EmbeddingBody, data)


def _inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[pb.EmbeddingInput]:
    """OpenAI's four shapes: a text, texts, one token array, token arrays."""
    if isinstance(value, str):
        return [pb.EmbeddingInput(text=value)]
    if value and all(isinstance(v, int) for v in value):
        return [pb.EmbeddingInput(tokens=pb.TokenIds(ids=_token_ids(value)))]  # type: ignore[arg-type]
    inputs = []
    for item in value:
        if isinstance(item, str):
            inputs.append(pb.EmbeddingInput(text=item))
        else:
            inputs.append(pb.EmbeddingInput(tokens=pb.TokenIds(ids=_token_ids(item))))  # type: ignore[arg-type]
    return inputs


def _token_ids(ids: Sequence[int]) -> list[int]:
    if any(not INT32[0] <= i <= INT32[1] for i in ids):
        raise invalid_request("Token ids must be 32-bit integers.", param="input")
    return list(ids)


def to_embedding_request(body: EmbeddingBody) -> pb.CreateEmbeddingRequest:
    """Translate a parsed body; range rules (dimensions, empty inputs) are the gateway's."""
    request = pb.CreateEmbeddingRequest(
        model=body.model, inputs=_inputs(body.input), user=body.user or ""
    )
    if body.dimensions is not None:
        request.dimensions = clamp_int32(body.dimensions)
    return request


def encode_base64(values: Sequence[float]) -> str:
    """OpenAI's base64 form: little-endian float32 bytes."""
    packed = array("f", values)
    if not _LITTLE_ENDIAN:
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def embedding_json(response: pb.CreateEmbeddingResponse, encoding: str) -> bytes:
    """OpenAI's list of embedding objects."""
    as_base64 = encoding == "base64"
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": e.index,
                    "embedding": encode_base64(e.values) if as_base64 else list(e.values),
                }
                for e in response.embeddings
            ],
            "model": response.model,
            "usage": {
                "prompt_tokens": response.usage.prompt_tokens,
                "total_tokens": response.usage.total_tokens,
            },
        }
    )


@router.post("/v1/embeddings")
async def create_embedding(request: Request) -> Response:
    """One vector per input; the call is cancelled if the client leaves first."""
    settings = request.app.state.settings
    raw = await read_body(request, settings.max_body_bytes)
    state = request.app.state
    body, embedding_request = await state.decoder.run(decode_embedding, raw, state.limits)
    stub = request.app.state.gateway.embeddings
    metadata = forwarded_metadata(request)
    timeout = settings.request_timeout_s
    encoding = body.encoding_format
    return UnaryResponse(
        lambda: stub.CreateEmbedding(embedding_request, metadata=metadata, timeout=timeout),
        lambda response: embedding_json(response, encoding),
    )
