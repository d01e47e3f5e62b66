"""``POST /v1/completions`` (OpenAI's legacy text completions) over the gateway's
CompletionService: the body parsed and type-checked here, every value rule
left to the gateway; the answer as ``text_completion`` JSON or SSE chunks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmgw.v1 import completions_pb2 as pb
from rest_shim import request_id
from rest_shim.asgi_responses import (
    JSON_HEADERS,
    SSE_HEADERS,
    routing_headers,
    send_error,
    watch_disconnect,
)
from rest_shim.drain import SHUTTING_DOWN, is_draining
from rest_shim.errors import ApiError, from_grpc_error, invalid_request
from rest_shim.http import forwarded_metadata, read_body
from rest_shim.parsing import Strict, add_seed_and_stop, clamp_int32, parse_json_object, validate
from rest_shim.request_limits import DEFAULT_LIMITS, RequestLimits, check_counts
from rest_shim.sse import DONE, FINISH_REASONS, KEEPALIVE, error_event

log = logging.getLogger("llmgw.shim")
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


class CompletionResponse(Response):
    """Runs a unary CreateCompletion and answers ``text_completion`` JSON."""

    def __init__(
        self,
        start_call: Callable[[], grpc.aio.UnaryUnaryCall[Any, Any]],
        with_logprobs: bool = False,
    ) -> None:
        super().__init__()
        self._start_call = start_call
        self._with_logprobs = with_logprobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer once every choice is whole; cancel the call if the client leaves."""
        call = self._start_call()
        watcher = watch_disconnect(receive, call)
        try:
            response: pb.CreateCompletionResponse = await call
            routing = routing_headers(await call.initial_metadata())
        except grpc.aio.AioRpcError as error:
            await send_error(send, from_grpc_error(error), scope)
            return
        except asyncio.CancelledError:
            if watcher.done():
                return  # the client left; nobody to answer
            raise
        finally:
            watcher.cancel()
        headers = [*JSON_HEADERS, request_id.header(scope), *routing]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": completion_json(response, self._with_logprobs)}
        )


class CompletionStreamResponse(Response):
    """Runs a StreamCompletion and relays it as OpenAI SSE. As for chat, an error
    before the first event is a plain HTTP error; after it, an SSE error event
    and no ``[DONE]``."""

    def __init__(
        self,
        start_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        include_usage: bool,
        keepalive_s: float,
    ) -> None:
        super().__init__()
        self._start_call = start_call
        self._include_usage = include_usage
        self._keepalive_s = keepalive_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay the stream; cancel the gateway call as soon as the client leaves."""
        call = self._start_call()
        watcher = watch_disconnect(receive, call)
        started = False
        pending: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        try:
            while not (await asyncio.wait({pending}, timeout=self._keepalive_s))[0]:
                if not started:
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
                    )
                    started = True
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            first = pending.result()
            if first is grpc.aio.EOF or not first.HasField("start"):
                raise RuntimeError("the gateway stream did not begin with StreamStart")
            start = first.start
            encoder = CompletionChunkEncoder(
                start.id, start.created, start.model, self._include_usage
            )
            if not started:
                headers = [*SSE_HEADERS, request_id.header(scope)]
                headers.extend(routing_headers(await call.initial_metadata()))
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
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
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except grpc.aio.AioRpcError as error:
            await _fail(send, scope, from_grpc_error(error), started)
        except asyncio.CancelledError:
            if watcher.done():
                return  # the client left; the gateway call is already cancelled
            if is_draining(scope):  # cut off at the end of the shutdown grace: say so
                await _fail(send, scope, SHUTTING_DOWN, started)
                return
            raise
        except Exception:
            log.exception("completion stream relay failed")
            await _fail(
                send,
                scope,
                ApiError(500, "The server had an error while relaying the stream.", "server_error"),
                started,
            )
        finally:
            pending.cancel()
            watcher.cancel()
            call.cancel()


async def _fail(send: Send, scope: Scope, error: ApiError, started: bool) -> None:
    try:
        if not started:
            await send_error(send, error, scope)
            return
        await send(
            {"type": "http.response.body", "body": error_event(error.body()), "more_body": False}
        )
    except OSError:
        pass  # the client is gone too; nothing left to tell


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
    return CompletionResponse(
        lambda: stub.CreateCompletion(unary_request, metadata=metadata, timeout=timeout),
        with_logprobs=body.logprobs is not None,
    )
