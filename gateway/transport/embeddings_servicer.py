"""gRPC servicer of llmgw.v1.EmbeddingService.

An embedding call goes through the same pipeline as a chat completion
(``ChatCompletionService``: validation, routing to the model's pool, retries,
fallbacks, metrics, traces); its stream is one Finished carrying the vectors.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

import grpc
from opentelemetry import trace

from common.grpcutil.status import ErrorDetails, build_status
from gateway.domain.chat import Finished, Routed
from gateway.domain.embedding import EmbeddingInput, EmbeddingRequest
from gateway.domain.service import ChatCompletionService
from gateway.errors import BackendFailed, GatewayError
from gateway.transport.auth import current_caller
from gateway.transport.servicer import (
    annotate_admitted,
    annotate_finished,
    annotate_routed,
    initial_metadata,
    with_client_request_id,
)
from gateway.transport.status import to_status
from llmgw.v1 import chat_pb2, embeddings_pb2_grpc
from llmgw.v1 import embeddings_pb2 as pb

log = logging.getLogger("llmgw.gateway")

_INTERNAL = build_status(
    grpc.StatusCode.INTERNAL, "internal gateway error", ErrorDetails(reason="internal_error")
)


def to_embedding_request(request: pb.CreateEmbeddingRequest) -> EmbeddingRequest:
    """Convert the request; an input with neither text nor tokens is empty (and refused)."""
    inputs: list[EmbeddingInput] = []
    for item in request.inputs:
        if item.WhichOneof("input") == "tokens":
            inputs.append(tuple(item.tokens.ids))
        else:
            inputs.append(item.text)
    return EmbeddingRequest(
        model=request.model,
        inputs=tuple(inputs),
        dimensions=request.dimensions if request.HasField("dimensions") else None,
        user=request.user,
    )


class EmbeddingServicer(embeddings_pb2_grpc.EmbeddingServiceServicer):
    """Serves embeddings."""

    def __init__(self, service: ChatCompletionService) -> None:
        self._service = service

    async def CreateEmbedding(
        self, request: pb.CreateEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateEmbeddingResponse:
        """Embed every input in one backend call."""
        try:
            admitted = await self._service.admit(to_embedding_request(request), current_caller())
            completion = with_client_request_id(admitted, context)
            span = trace.get_current_span()
            annotate_admitted(span, completion, operation="embeddings")
            routed: Routed | None = None
            finished: Finished | None = None
            async with aclosing(self._service.stream(completion)) as events:
                async for event in events:
                    if type(event) is Routed:
                        routed = event
                    elif type(event) is Finished:
                        finished = event
            if routed is None or finished is None or finished.vectors is None:
                raise BackendFailed("The model's backend returned no vectors.")
            annotate_routed(span, routed)
            annotate_finished(span, finished)
            await context.send_initial_metadata(initial_metadata(completion, routed))
            prompt_tokens = finished.usage.prompt_tokens
            return pb.CreateEmbeddingResponse(
                id=completion.id,
                model=routed.model,
                embeddings=[
                    pb.Embedding(index=i, values=vector)
                    for i, vector in enumerate(finished.vectors)
                ],
                usage=chat_pb2.Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
            )
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("unexpected error in CreateEmbedding")
            await context.abort_with_status(_INTERNAL)
        raise AssertionError("unreachable: abort_with_status raises")
