"""gRPC servicers of the public API: convert, delegate to the domain, map errors."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from opentelemetry import trace

from common.batching import StreamStalled
from common.grpcutil.abort import abort_soon
from common.grpcutil.status import ErrorDetails, build_status
from gateway.domain.assemble import AssembledChoice
from gateway.domain.chat import ChoiceDelta, Finished, Generation, Routed
from gateway.domain.service import ChatCompletionService, Completion
from gateway.errors import ClientStalled, GatewayError
from gateway.routing.registry import ModelKind, ModelRoute
from gateway.transport.auth import current_caller
from gateway.transport.convert import (
    FINISH_REASONS,
    to_chat_request,
    to_choice_delta,
    to_logprobs,
    to_usage,
)
from gateway.transport.ratelimit import Metadata, ratelimit_metadata
from gateway.transport.status import to_status
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc

log = logging.getLogger("llmgw.gateway")

_INTERNAL = build_status(
    grpc.StatusCode.INTERNAL, "internal gateway error", ErrorDetails(reason="internal_error")
)


# Response metadata naming what served the request (REST: the same-named headers).
MODEL_HEADER = "x-llmgw-model"
BACKEND_HEADER = "x-llmgw-backend"
# Request metadata naming a conversation, for prefix-cache affinity (REST: the same header).
SESSION_HEADER = "x-session-id"


def session_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-session-id`` metadata, or empty."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_HEADER and isinstance(value, str):
            return value
    return ""


def initial_metadata(completion: Completion, routed: Routed) -> Metadata:
    """Initial metadata of an admitted call: which model and backend endpoint
    served it, and the caller's rate-limit state after admission."""
    routing = ((MODEL_HEADER, routed.model), (BACKEND_HEADER, routed.backend))
    if completion.grant is None:
        return routing
    return (*routing, *ratelimit_metadata(completion.grant.decision))


def to_choice(choice: AssembledChoice) -> pb.Choice:
    """One whole choice to proto."""
    message = pb.ChatMessage(role=pb.ROLE_ASSISTANT, content=choice.content)
    if choice.reasoning:
        message.reasoning_content = choice.reasoning
    for call in choice.tool_calls:
        message.tool_calls.add(
            id=call.id, type="function", function={"name": call.name, "arguments": call.arguments}
        )
    return pb.Choice(
        index=choice.index,
        message=message,
        finish_reason=FINISH_REASONS[choice.finish_reason],
        logprobs=to_logprobs(choice.logprobs),
    )


def with_client_request_id(completion: Completion, context: grpc.aio.ServicerContext) -> Completion:
    """Attach the caller's x-request-id (metadata) for the access log and spans."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return dataclasses.replace(completion, client_request_id=value[:128])
    return completion


def annotate_admitted(span: trace.Span, completion: Completion, operation: str = "chat") -> None:
    """Request attributes (GenAI semantic conventions); never prompt text."""
    span.set_attribute("gen_ai.operation.name", operation)
    span.set_attribute("gen_ai.request.model", completion.model)
    generation = completion.generation
    if isinstance(generation, Generation) and generation.max_tokens is not None:
        span.set_attribute("gen_ai.request.max_tokens", generation.max_tokens)
    span.set_attribute("llmgw.request_id", completion.id)
    span.set_attribute("llmgw.tenant", completion.tenant or "anonymous")
    if completion.client_request_id:
        span.set_attribute("llmgw.x_request_id", completion.client_request_id)


def annotate_routed(span: trace.Span, routed: Routed) -> None:
    """Who served the request."""
    span.set_attribute("gen_ai.response.model", routed.model)
    span.set_attribute("llmgw.backend", routed.backend)


def annotate_finished(span: trace.Span, finished: Finished) -> None:
    """Token counts and finish reason."""
    span.set_attribute("gen_ai.usage.input_tokens", finished.usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", finished.usage.completion_tokens)
    span.set_attribute("gen_ai.response.finish_reasons", [finished.reason.value])


class ChatServicer(pb_grpc.ChatServiceServicer):
    """Serves chat completions, streamed and whole."""

    def __init__(self, service: ChatCompletionService) -> None:
        self._service = service

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateChatCompletionResponse:
        """Generate the whole completion, then answer once."""
        try:
            completion = await self._service.admit(
                to_chat_request(request.params, session_id(context)), current_caller()
            )
            completion = with_client_request_id(completion, context)
            span = trace.get_current_span()
            annotate_admitted(span, completion)
            result = await self._service.complete(completion)
            annotate_routed(span, result.routed)
            annotate_finished(span, result.finished)
            await context.send_initial_metadata(initial_metadata(completion, result.routed))
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("unexpected error in CreateChatCompletion")
            await context.abort_with_status(_INTERNAL)
        choices = [to_choice(c) for c in result.choices]
        return pb.CreateChatCompletionResponse(
            id=completion.id,
            model=result.routed.model,
            created=completion.created,
            message=choices[0].message,
            finish_reason=choices[0].finish_reason,
            usage=to_usage(result.finished.usage),
            choices=choices,
        )

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        """Stream the completion. StreamStart goes out with the first backend
        event, so a failure before the first token is a plain error status
        and the client never sees a started stream that then fails early."""
        Response = pb.StreamChatCompletionResponse
        ContentDelta = pb.ContentDelta
        try:
            completion = await self._service.admit(
                to_chat_request(request.params, session_id(context)), current_caller()
            )
            completion = with_client_request_id(completion, context)
            span = trace.get_current_span()
            annotate_admitted(span, completion)
            events = self._service.stream(completion, lambda: end_stalled_call(context))
            async with aclosing(events):
                async for event in events:
                    if type(event) is str:
                        yield Response(delta=ContentDelta(content=event))
                    elif type(event) is ChoiceDelta:
                        yield Response(choice_delta=to_choice_delta(event))
                    elif type(event) is Routed:
                        # Sent with the first backend event, not on admission.
                        await context.send_initial_metadata(initial_metadata(completion, event))
                        annotate_routed(span, event)
                        yield Response(
                            start=pb.StreamStart(
                                id=completion.id, model=event.model, created=completion.created
                            )
                        )
                    else:
                        assert isinstance(event, Finished)
                        end = pb.StreamEnd(
                            finish_reason=FINISH_REASONS[event.reason],
                            choice_finish_reasons=[FINISH_REASONS[r] for r in event.choice_reasons],
                        )
                        if request.include_usage:
                            end.usage.CopyFrom(to_usage(event.usage))
                        annotate_finished(span, event)
                        yield Response(end=end)
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
        except StreamStalled:
            # end_stalled_call logged it and aborted the call (its task ran before
            # this handler was woken): returning ends it with that status.
            pass
        except Exception:
            log.exception("unexpected error in StreamChatCompletion")
            await context.abort_with_status(_INTERNAL)


def end_stalled_call(context: grpc.aio.ServicerContext) -> None:
    """End a call whose client stopped reading (the handler is blocked in a write)."""
    log.warning("a client read nothing of its stream for the stall timeout; call ended")
    abort_soon(
        context,
        to_status(ClientStalled("The stream was stopped: the client read nothing for too long.")),
    )


_KINDS = {ModelKind.CHAT: pb.MODEL_KIND_CHAT, ModelKind.EMBEDDING: pb.MODEL_KIND_EMBEDDING}


class ModelServicer(pb_grpc.ModelServiceServicer):
    """Lists and describes the served models."""

    def __init__(self, service: ChatCompletionService, created: int) -> None:
        self._service = service
        self._created = created

    def _model(self, route: ModelRoute) -> pb.Model:
        return pb.Model(
            id=route.name,
            created=self._created,
            owned_by=route.owned_by,
            aliases=list(route.aliases),
            kind=_KINDS[route.kind],
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every configured model the caller may use, with its aliases."""
        return pb.ListModelsResponse(
            models=[self._model(r) for r in self._service.models_for(current_caller())]
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        """One model by name or alias; NOT_FOUND when unknown or outside the caller's list."""
        try:
            route = self._service.model_for(request.model, current_caller())
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
        return pb.GetModelResponse(model=self._model(route))
