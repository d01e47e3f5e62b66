"""``POST /v1/completions`` (OpenAI's legacy text completions) over the gateway's
CompletionService: the body parsed and type-checked here, every value rule
left to the gateway; the answer as ``text_completion`` JSON or SSE chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Send

from llmgw.v1 import completions_pb2 as pb
from llmgw.v1.chat_pb2 import StreamStart
from rest_shim.asgi_responses import StreamResponse, UnaryResponse
from rest_shim.errors import invalid_request
from rest_shim.http import forwarded_metadata, read_body
from rest_shim.parsing import Strict, add_seed_and_stop, clamp_int32, parse_json_object, validate
from rest_shim.request_limits import DEFAULT_LIMITS, RequestLimits, check_counts
from rest_shim.sse import DONE, FINISH_REASONS

router = APIRouter()

# OpenAI parameters the gateway cannot honour: refused unless null or empty.
_UNSUPPORTED = frozenset({"logit_bias"})


class StreamOptions(Strict):
    """``stream_options``."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's; nothing to obfuscate here


class CompletionBody(Strict):
    """The parameters of POST /v1/completions."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    echo: bool | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    seed: int | None = None


def decode_completion(
    raw: bytes, limits: RequestLimits
) -> tuple[CompletionBody, pb.CompletionParams]:
    """A completions body, parsed, capped and translated (raises ApiError); module-level
    so that the shim's BodyDecoder can run it in a worker process for large bodies."""
    body = parse_completion(raw, limits)
    return body, to_completion_params(body)


def parse_completion(raw: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> CompletionBody:
    """Decode and type-check a body; raise ApiError (400) naming the problem."""
    data = parse_json_object(raw)
    check_counts(data, limits)
    for key, value in data.items():
        if key not in CompletionBody.model_fields:
            raise invalid_request(f"Unrecognized request argument supplied: {key}", param=key)
        if key in _UNSUPPORTED and value not in (None, {}):
            raise invalid_request(
                f"'{key}' is not supported by this gateway.",
                param=key,
                code="unsupported_parameter",
            )
    body = validate(CompletionBody, data)
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise invalid_request(
            "'best_of' is not supported by this gateway; leave it unset or equal to n.",
            param="best_of",
            code="unsupported_parameter",
        )
    if body.stream_options is not None and not body.stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return body


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise invalid_request("'prompt' must not be an empty list.", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return prompt  # type: ignore[return-value]
    raise invalid_request(
        "Token-id prompts are not supported by this gateway; send the prompt as text.",
        param="prompt",
        code="unsupported_parameter",
    )


def to_completion_params(body: CompletionBody) -> pb.CompletionParams:
    """Translate a parsed body to the gateway's request parameters."""
    params = pb.CompletionParams(
        model=body.model, prompts=_prompts(body.prompt), echo=bool(body.echo), user=body.user or ""
    )
    for name in ("max_tokens", "n", "logprobs"):
        value = getattr(body, name)
        if value is not None:
            setattr(params, name, clamp_int32(value))
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "suffix"):
        value = getattr(body, name)
        if value is not None:
            setattr(params, name, value)
    add_seed_and_stop(params, body)
    return params


def _usage(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def legacy_logprobs(entries: Sequence[Any], offset: int = 0) -> dict[str, list[Any]]:
    """OpenAI's legacy ``logprobs`` object of some tokens: parallel lists, the
    alternatives as token -> logprob maps, ``text_offset`` each token's position in
    the choice's text (from ``offset``, where the previous chunk's tokens ended)."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry.token)
        values.append(entry.logprob)
        tops.append({t.token: t.logprob for t in entry.top_logprobs})
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def completion_json(response: pb.CreateCompletionResponse, with_logprobs: bool = False) -> bytes:
    """OpenAI's ``text_completion`` object."""
    return orjson.dumps(
        {
            "id": response.id,
            "object": "text_completion",
            "created": response.created,
            "model": response.model,
            "choices": [
                {
                    "text": c.text,
                    "index": c.index,
                    "logprobs": legacy_logprobs(c.logprobs) if with_logprobs else None,
                    "finish_reason": FINISH_REASONS.get(c.finish_reason, "stop"),
                }
                for c in response.choices
            ],
            "usage": _usage(response.usage),
        }
    )


class CompletionChunkEncoder:
    """Encodes the SSE events of one streamed text completion; what is constant
    in every chunk is encoded once."""

    __slots__ = ("_head", "_offsets", "_tail")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            b'data: {"id":'
            + orjson.dumps(completion_id)
            + b',"object":"text_completion","created":'
            + str(int(created)).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":['
        )
        # With include_usage, OpenAI sends "usage":null on every chunk but the last.
        self._tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self._offsets: dict[int, int] = {}  # where each choice's next token starts

    def text(self, index: int, text: str) -> bytes:
        """A text delta of one choice."""
        return (
            self._head
            + b'{"text":'
            + orjson.dumps(text)
            + b',"index":'
            + str(index).encode()
            + b',"logprobs":null,"finish_reason":null}'
            + self._tail
        )

    def text_with_logprobs(self, index: int, text: str, entries: Sequence[Any]) -> bytes:
        """A text delta with its tokens' log probabilities (``logprobs`` was asked)."""
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + sum(len(e.token) for e in entries)
        return (
            self._head
            + b'{"text":'
            + orjson.dumps(text)
            + b',"index":'
            + str(index).encode()
            + b',"logprobs":'
            + orjson.dumps(legacy_logprobs(entries, offset))
            + b',"finish_reason":null}'
            + self._tail
        )

    def finish(self, index: int, reason_code: int) -> bytes:
        """The chunk carrying one choice's finish reason (empty text)."""
        reason = FINISH_REASONS.get(reason_code, "stop")
        return (
            self._head
            + b'{"text":"","index":'
            + str(index).encode()
            + b',"logprobs":null,"finish_reason":"'
            + reason.encode()
            + b'"}'
            + self._tail
        )

    def usage(self, usage: Any) -> bytes:
        """The final usage chunk (empty choices), sent when include_usage was asked."""
        return self._head + b'],"usage":' + orjson.dumps(_usage(usage)) + b"}\n\n"


class CompletionStreamResponse(StreamResponse):
    """Runs a StreamCompletion and relays it as OpenAI ``text_completion`` SSE chunks."""

    relay_name = "completion stream"

    def __init__(
        self,
        start_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        include_usage: bool,
        keepalive_s: float,
    ) -> None:
        super().__init__(start_call, keepalive_s)
        self._include_usage = include_usage

    async def relay(
        self, start: StreamStart, call: grpc.aio.UnaryStreamCall[Any, Any], send: Send
    ) -> None:
        """A chunk per text delta and per finished choice; the usage chunk and ``[DONE]``."""
        encoder = CompletionChunkEncoder(start.id, start.created, start.model, self._include_usage)
        ended = False
        read = call.read
        while (message := await read()) is not grpc.aio.EOF:
            kind = message.WhichOneof("event")
            if kind == "delta":
                delta = message.delta
                if delta.logprobs:
                    chunk = encoder.text_with_logprobs(delta.index, delta.text, delta.logprobs)
                else:
                    chunk = encoder.text(delta.index, delta.text)
            elif kind == "choice_end":
                end = message.choice_end
                chunk = encoder.finish(end.index, end.finish_reason)
            elif kind == "end":
                chunk = DONE
                if message.end.HasField("usage"):
                    chunk = encoder.usage(message.end.usage) + DONE
                ended = True
            else:
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not ended:
            raise RuntimeError("the gateway stream ended without its end event")


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    """Legacy text completions, whole or streamed."""
    settings = request.app.state.settings
    raw = await read_body(request, settings.max_body_bytes)
    state = request.app.state
    body, params = await state.decoder.run(decode_completion, raw, state.limits)
    stub = request.app.state.gateway.completions
    metadata = forwarded_metadata(request)
    timeout = settings.request_timeout_s
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream_request = pb.StreamCompletionRequest(params=params, include_usage=include_usage)
        return CompletionStreamResponse(
            lambda: stub.StreamCompletion(stream_request, metadata=metadata, timeout=timeout),
            include_usage,
            settings.sse_keepalive_s,
        )
    unary_request = pb.CreateCompletionRequest(params=params)
    with_logprobs = body.logprobs is not None
    return UnaryResponse(
        lambda: stub.CreateCompletion(unary_request, metadata=metadata, timeout=timeout),
        lambda response: completion_json(response, with_logprobs),
    )
