"""gRPC servicer of the backend contract over one Engine: converts and delegates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from backends.convert import FINISH, to_choice_message, to_embed_request
from backends.convert import to_engine_request as to_engine_request
from backends.engine import (
    ChoiceEvent,
    Delta,
    Engine,
    EngineError,
    EngineEvent,
    EngineFailed,
    EngineRejectedRequest,
    EngineUnavailable,
    Finished,
)
from common.batching import Pace, StreamLimits, batched
from common.grpcutil.abort import abort_soon
from common.grpcutil.status import ErrorDetails, FieldViolation, build_status
from llmgw.backend.v1 import backend_pb2 as pb
from llmgw.backend.v1 import backend_pb2_grpc as pb_grpc


def engine_error_status(error: EngineError) -> grpc.Status:
    """The one mapping from engine errors to gRPC statuses."""
    if isinstance(error, EngineRejectedRequest):
        return build_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            str(error),
            ErrorDetails(
                reason=error.reason,
                field_violations=(FieldViolation(error.field, str(error)),),
            ),
        )
    if isinstance(error, EngineUnavailable):
        return build_status(
            grpc.StatusCode.UNAVAILABLE,
            str(error),
            ErrorDetails(reason=error.reason, retry_after_s=1.0),
        )
    code = grpc.StatusCode.INTERNAL if isinstance(error, EngineFailed) else grpc.StatusCode.UNKNOWN
    return build_status(code, str(error), ErrorDetails(reason=error.reason))


def _messages(batch: list[EngineEvent]) -> list[pb.GenerateResponse]:
    """One message for each run of plain deltas in a batch, one per other event."""
    out: list[pb.GenerateResponse] = []
    texts: list[str] = []
    tokens = 0
    for event in batch:
        if type(event) is Delta:
            texts.append(event.text)
            tokens += event.token_count
            continue
        if texts:
            out.append(_delta(texts, tokens))
            texts, tokens = [], 0
        if type(event) is ChoiceEvent:
            out.append(to_choice_message(event))
        else:
            assert isinstance(event, Finished)
            out.append(
                pb.GenerateResponse(
                    finished=pb.GenerateFinished(
                        finish_reason=FINISH[event.reason],
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        choice_finish_reasons=[FINISH[r] for r in event.choice_reasons],
                    )
                )
            )
    if texts:
        out.append(_delta(texts, tokens))
    return out


def _stalled_status(limits: StreamLimits) -> grpc.Status:
    return build_status(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"the receiver read nothing for {limits.stall_timeout_s:g}s; the generation was stopped",
        ErrorDetails(reason="receiver_stalled"),
    )


def _weight(event: EngineEvent) -> int:
    """An event's share of the stream buffer and batch limits: its characters."""
    return len(event.text) + 1 if type(event) is Delta else 1


def _delta(texts: list[str], tokens: int) -> pb.GenerateResponse:
    text = texts[0] if len(texts) == 1 else "".join(texts)
    return pb.GenerateResponse(delta=pb.TokenDelta(text=text, token_count=tokens))


class BackendServicer(pb_grpc.BackendServiceServicer):
    """Serves Generate and GetLoad for one engine."""

    def __init__(
        self, engine: Engine, pace: Pace | None = None, limits: StreamLimits | None = None
    ) -> None:
        self._engine = engine
        # Holds the next message of a stream while this process falls behind (and
        # by the opt-in stream interval), so tokens merge; see common.pace.
        self._pace = pace
        self._limits = limits or StreamLimits()

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Stream the engine's output; cancellation of this call aborts the engine.

        Deltas that the engine produced while the previous message was being
        written go out merged in one message (see common.batching); a
        receiver that stops reading pauses the engine's stream, and after the
        stall timeout the call ends with DEADLINE_EXCEEDED.
        """
        try:
            engine_request = to_engine_request(request)
            limits = self._limits
            # Closing the batches closes the engine stream: its cleanup (the
            # abort) runs now, not at garbage collection.
            batches = batched(
                self._engine.generate(engine_request),
                limits,
                weight=_weight,
                pace=self._pace,
                on_stall=lambda: abort_soon(context, _stalled_status(limits)),
            )
            async with aclosing(batches):
                async for batch in batches:
                    for message in _messages(batch):
                        yield message
        except EngineError as error:
            await context.abort_with_status(engine_error_status(error))

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        """Embed every input with the engine."""
        try:
            result = await self._engine.embed(to_embed_request(request))
        except EngineError as error:
            await context.abort_with_status(engine_error_status(error))
            raise AssertionError("unreachable: abort_with_status raises") from None
        return pb.EmbedResponse(
            embeddings=[pb.EmbedVector(values=v) for v in result.vectors],
            prompt_tokens=result.prompt_tokens,
        )

    async def GetLoad(
        self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoadResponse:
        """Report the engine's current load."""
        report = self._engine.load()
        response = pb.GetLoadResponse(
            running=report.running, waiting=report.waiting, capacity=report.capacity
        )
        if report.kv_cache_usage is not None:
            response.kv_cache_usage = report.kv_cache_usage
        return response
