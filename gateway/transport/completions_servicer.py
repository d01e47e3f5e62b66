"""gRPC servicer of llmgw.v1.CompletionService (raw-prompt completions).

Each choice (every prompt times ``n``) is one generation through the chat
pipeline of ``ChatCompletionService``: same validation, routing, retries,
fallbacks, metrics and traces. The call is admitted, rate-limited and metered
as one request (``admit_all``, ``stream_all``); the choices' streams arrive
merged with their index; the prompt is echoed here, not by the engine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import grpc
from opentelemetry import trace

from common.batching import StreamStalled
from common.grpcutil.status import ErrorDetails, build_status
from gateway.domain.chat import (
    NO_FEATURES,
    ChatRequest,
    ChoiceDelta,
    FanOut,
    Features,
    Finished,
    Routed,
    TokenLogprob,
    Usage,
)
from gateway.domain.service import ChatCompletionService, Choices
from gateway.errors import BackendFailed, GatewayError, InvalidRequest, Violation
from gateway.transport.auth import current_caller
from gateway.transport.convert import FINISH_REASONS, to_logprobs
from gateway.transport.servicer import (
    annotate_admitted,
    annotate_finished,
    annotate_routed,
    end_stalled_call,
    initial_metadata,
    with_client_request_id,
)
from gateway.transport.status import to_status
from llmgw.v1 import chat_pb2, completions_pb2_grpc
from llmgw.v1 import completions_pb2 as pb

log = logging.getLogger("llmgw.gateway")

_INTERNAL = build_status(
    grpc.StatusCode.INTERNAL, "internal gateway error", ErrorDetails(reason="internal_error")
)
# Choices of one request (prompts times n): each is a generation of its own.
MAX_CHOICES = 128
# max_tokens when the client sets none: OpenAI's documented default for completions
# (and vLLM's), not the model's chat default.
DEFAULT_MAX_TOKENS = 16
# OpenAI's limit of alternatives per position for legacy completions.
MAX_LOGPROBS = 5


def to_fanout(params: pb.CompletionParams) -> FanOut:
    """One request per choice, prompt-major (choice i*n+j is prompt i's j-th), as OpenAI
    orders them. With a seed, choice j samples with seed+j so that choices differ."""
    problems: list[Violation] = []
    if params.HasField("suffix") and params.suffix:
        problems.append(
            Violation("suffix", "suffix (insertion) is not supported by this gateway's engines")
        )
    features = NO_FEATURES
    if params.HasField("logprobs"):
        if not 0 <= params.logprobs <= MAX_LOGPROBS:
            problems.append(
                Violation(
                    "logprobs",
                    f"logprobs must be between 0 and {MAX_LOGPROBS}, got {params.logprobs}",
                )
            )
        elif params.echo:
            problems.append(
                Violation(
                    "echo", "echo with logprobs (the prompt's log probabilities) is not supported"
                )
            )
        features = Features(logprobs=True, top_logprobs=params.logprobs)
    n = params.n if params.HasField("n") else 1
    if n < 1:
        problems.append(Violation("n", f"n must be at least 1, got {n}"))
    if not params.prompts:
        problems.append(Violation("prompt", "a prompt is required"))
    elif len(params.prompts) * max(n, 1) > MAX_CHOICES:
        problems.append(
            Violation("n", f"at most {MAX_CHOICES} choices (prompts times n) per request")
        )
    if problems:
        unsupported = all(p.field in ("suffix", "echo") for p in problems)
        raise InvalidRequest(problems, reason="unsupported_parameter" if unsupported else None)
    seed = params.seed if params.HasField("seed") else None
    requests = [
        ChatRequest(
            model=params.model,
            messages=(),
            prompt=prompt,
            max_tokens=params.max_tokens if params.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
            temperature=params.temperature if params.HasField("temperature") else None,
            top_p=params.top_p if params.HasField("top_p") else None,
            stop=tuple(params.stop),
            seed=None if seed is None else seed + j,
            presence_penalty=(
                params.presence_penalty if params.HasField("presence_penalty") else None
            ),
            frequency_penalty=(
                params.frequency_penalty if params.HasField("frequency_penalty") else None
            ),
            user=params.user,
            features=features,
        )
        for prompt in params.prompts
        for j in range(n)
    ]
    return FanOut(requests, n)


def prompt_usage(finishes: Sequence[Finished | None], n: int) -> chat_pb2.Usage:
    """Usage as OpenAI counts it: each prompt's tokens once, every choice's output."""
    prompt = sum(f.usage.prompt_tokens for i, f in enumerate(finishes) if f and i % n == 0)
    output = sum(f.usage.completion_tokens for f in finishes if f)
    return chat_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output
    )


class CompletionServicer(completions_pb2_grpc.CompletionServiceServicer):
    """Serves raw-prompt completions, streamed and whole."""

    def __init__(self, service: ChatCompletionService) -> None:
        self._service = service

    async def _admit(
        self, params: pb.CompletionParams, context: grpc.aio.ServicerContext
    ) -> Choices:
        # One admission for the whole call: every choice generates under its one grant.
        admitted = await self._service.admit_all(to_fanout(params), current_caller())
        completions = [with_client_request_id(c, context) for c in admitted.completions]
        span = trace.get_current_span()
        annotate_admitted(span, completions[0], operation="text_completion")
        return Choices(completions, admitted.n)

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCompletionResponse:
        """Generate every choice, then answer once."""
        params = request.params
        try:
            admitted = await self._admit(params, context)
            completions, n = admitted.completions, admitted.n
            texts: list[list[str]] = [[] for _ in completions]
            logprobs: list[list[TokenLogprob]] = [[] for _ in completions]
            finishes: list[Finished | None] = [None] * len(completions)
            routed: Routed | None = None
            async with aclosing(self._service.stream_all(admitted)) as events:
                async for index, event in events:
                    if type(event) is str:
                        texts[index].append(event)
                    elif type(event) is ChoiceDelta:  # text with its log probabilities
                        texts[index].append(event.content)
                        logprobs[index].extend(event.logprobs)
                    elif type(event) is Routed:
                        routed = routed or event
                    else:
                        assert isinstance(event, Finished)
                        finishes[index] = event
            if routed is None:
                raise BackendFailed("The model's backend ended the stream before it finished.")
            span = trace.get_current_span()
            annotate_routed(span, routed)
            await context.send_initial_metadata(initial_metadata(completions[0], routed))
            usage = prompt_usage(finishes, n)
            first = completions[0]
            choices = []
            for index, (parts, finished) in enumerate(zip(texts, finishes, strict=True)):
                assert finished is not None, "every merged stream ended with Finished"
                prefix = params.prompts[index // n] if params.echo else ""
                choices.append(
                    pb.CompletionChoice(
                        index=index,
                        text=prefix + "".join(parts),
                        finish_reason=FINISH_REASONS[finished.reason],
                        logprobs=to_logprobs(logprobs[index]),
                    )
                )
            annotate_finished(span, _total(finishes, usage))
            return pb.CreateCompletionResponse(
                id=first.id, model=routed.model, created=first.created, choices=choices, usage=usage
            )
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("unexpected error in CreateCompletion")
            await context.abort_with_status(_INTERNAL)
        raise AssertionError("unreachable: abort_with_status raises")

    async def StreamCompletion(
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompletionResponse]:
        """Stream every choice. StreamStart goes out with the first backend event, as
        in StreamChatCompletion; with echo, each choice's first delta is its prompt."""
        Response = pb.StreamCompletionResponse
        Delta = pb.CompletionDelta
        params = request.params
        try:
            admitted = await self._admit(params, context)
            completions, n = admitted.completions, admitted.n
            finishes: list[Finished | None] = [None] * len(completions)
            started = False
            span = trace.get_current_span()
            stream = self._service.stream_all(admitted, lambda: end_stalled_call(context))
            async with aclosing(stream) as events:
                async for index, event in events:
                    if type(event) is str:
                        yield Response(delta=Delta(index=index, text=event))
                    elif type(event) is ChoiceDelta:  # text with its log probabilities
                        yield Response(
                            delta=Delta(
                                index=index,
                                text=event.content,
                                logprobs=to_logprobs(event.logprobs),
                            )
                        )
                    elif type(event) is Routed:
                        if not started:
                            started = True
                            first = completions[0]
                            await context.send_initial_metadata(initial_metadata(first, event))
                            annotate_routed(span, event)
                            yield Response(
                                start=chat_pb2.StreamStart(
                                    id=first.id, model=event.model, created=first.created
                                )
                            )
                        if params.echo:
                            yield Response(
                                delta=Delta(index=index, text=params.prompts[index // n])
                            )
                    else:
                        assert isinstance(event, Finished)
                        finishes[index] = event
                        yield Response(
                            choice_end=pb.CompletionChoiceEnd(
                                index=index, finish_reason=FINISH_REASONS[event.reason]
                            )
                        )
            usage = prompt_usage(finishes, n)
            end = pb.CompletionStreamEnd()
            if request.include_usage:
                end.usage.CopyFrom(usage)
            annotate_finished(span, _total(finishes, usage))
            yield Response(end=end)
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
        except StreamStalled:
            # end_stalled_call logged it and aborted the call (its task ran before
            # this handler was woken): returning ends it with that status.
            pass
        except Exception:
            log.exception("unexpected error in StreamCompletion")
            await context.abort_with_status(_INTERNAL)


def _total(finishes: Sequence[Finished | None], usage: chat_pb2.Usage) -> Finished:
    """One Finished for the span: the first choice's reason and the summed usage."""
    first = next(f for f in finishes if f is not None)
    return Finished(first.reason, Usage(usage.prompt_tokens, usage.completion_tokens))
