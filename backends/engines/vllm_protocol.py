"""Translation between the engine contract and vLLM's OpenAI-compatible HTTP API.

Pure functions, no I/O: the request body for ``/v1/chat/completions``, the
parser of its SSE stream, and the map from vLLM's errors to engine errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from backends.engine import (
    Delta,
    EngineError,
    EngineFailed,
    EngineRejectedRequest,
    EngineRequest,
    EngineUnavailable,
    Finished,
    FinishReason,
)

# vLLM's finish reasons that end a generation normally. "abort" (the request was
# aborted inside vLLM) and "error" are failures, not reasons.
_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    # Tool calls are not part of the contract yet; the turn did end normally.
    "tool_calls": FinishReason.STOP,
}

# vLLM's `param` of a validation error -> the request field the client set.
_PARAMS = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "input_tokens": "messages",
    "input_text": "messages",
    "messages": "messages",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


def chat_body(request: EngineRequest, model: str) -> bytes:
    """The JSON body of a streamed chat completion for ``request``.

    Usage is always requested, per chunk as well (``continuous_usage_stats``):
    the sidecar contract carries exact token counts in every delta and in the
    end event whether or not the client asked for usage; the gateway decides
    what the client sees.
    """
    messages = []
    for m in request.messages:
        # Small models' chat templates know system/user/assistant; OpenAI's
        # "developer" is the newer name of "system".
        message: dict[str, str] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.content,
        }
        if m.name is not None:
            message["name"] = m.name
        messages.append(message)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if request.stop:
        body["stop"] = list(request.stop)
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    return orjson.dumps(body)


def error_from_response(status: int, body: bytes) -> EngineError:
    """The engine error for a non-200 answer of vLLM (its OpenAI error JSON, or anything)."""
    message, param = _error_fields(body)
    if status == 400 or status == 422:
        # The client's fault (e.g. a prompt over the context): the message is
        # vLLM's own, written for API users, and reaches the client.
        return EngineRejectedRequest(message or "vLLM refused the request", _field(param, message))
    if status in (408, 429, 502, 503, 504):
        return EngineUnavailable(f"vLLM answered {status}: {message}")
    if status == 404:
        # The sidecar asked for a model vLLM does not serve: a deployment error.
        return EngineFailed(f"vLLM does not serve the model (404): {message}")
    return EngineFailed(f"vLLM answered {status}: {message}")


# vLLM appends "(parameter=input_tokens, value=2049)" to validation messages:
# its internal names, not the client's; the field violation says which field.
_PARAMETER_SUFFIX = re.compile(r"\s*\(parameter=[^()]*\)$")


def _error_fields(body: bytes) -> tuple[str, str | None]:
    message, param = _raw_error_fields(body)
    return _PARAMETER_SUFFIX.sub("", message), param


def _raw_error_fields(body: bytes) -> tuple[str, str | None]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode(errors="replace").strip(), None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)  # vLLM nests it; older versions did not
        if isinstance(error, dict):
            message = error.get("message")
            param = error.get("param")
            return (
                str(message) if message is not None else "",
                param if isinstance(param, str) else None,
            )
    return str(parsed)[:300], None


def _field(param: str | None, message: str) -> str:
    if param is not None and param in _PARAMS:
        return _PARAMS[param]
    if "max_tokens" in message or "max_completion_tokens" in message:
        return "max_tokens"
    return "messages"


@dataclass
class StreamParser:
    """Turns the ``data:`` payloads of vLLM's SSE stream into engine events.

    Feed it each payload (the bytes after ``data: ``); it returns a Delta for
    text, None for chunks that carry none, and raises EngineError for an
    in-stream error. After ``[DONE]``, ``finished()`` gives the end event or
    raises when vLLM never said why it stopped.
    """

    reported_tokens: int = 0  # completion tokens already passed on in deltas
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False

    def feed(self, payload: bytes) -> Delta | None:
        """One SSE data payload -> at most one Delta."""
        if payload == b"[DONE]":
            self.done = True
            return None
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            raise EngineFailed(f"vLLM sent a chunk that is not JSON: {payload[:200]!r}") from error
        if "error" in chunk:
            raise _stream_error(chunk["error"])
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
        text = ""
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                text += content
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        if not text:
            return None
        # Tokens held back by the detokenizer (an incomplete character) show up
        # in the count of the chunk that finally carries their text.
        if self.completion_tokens is not None:
            count = max(self.completion_tokens - self.reported_tokens, 1)
        else:  # a vLLM without per-chunk usage: one token per chunk
            count = 1
        self.reported_tokens += count
        return Delta(text, count)

    def finished(self) -> Finished:
        """The end event, once the stream is over."""
        reason = self.finish_reason
        if not self.done or reason is None:
            raise EngineFailed("vLLM ended the stream without a finish reason")
        if reason == "abort":
            raise EngineFailed("vLLM aborted the request")
        if reason == "error":
            raise EngineFailed("vLLM failed while generating")
        if self.prompt_tokens is None or self.completion_tokens is None:
            raise EngineFailed("vLLM sent no usage (stream_options.include_usage)")
        return Finished(
            _FINISH.get(reason, FinishReason.STOP), self.prompt_tokens, self.completion_tokens
        )


def _stream_error(error: object) -> EngineError:
    if isinstance(error, dict):
        code = error.get("code")
        status = code if isinstance(code, int) else 500
        return error_from_response(status, orjson.dumps({"error": error}))
    return EngineFailed(f"vLLM sent an error event: {error!r}"[:300])


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What vLLM's /metrics says about its load."""

    running: int
    waiting: int
    kv_cache_usage: float | None


_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = "vllm:kv_cache_usage_perc"


def parse_metrics(text: str) -> EngineLoad:
    """Read running/waiting requests and KV-cache use from Prometheus text.

    Sums over label sets (one per engine of a data-parallel vLLM); the KV-cache
    use is the highest of the engines, the one that runs out first. vLLM calls
    it "perc" but reports a fraction in [0, 1].
    """
    running = waiting = 0.0
    kv: list[float] = []
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name not in (_RUNNING, _WAITING, _KV):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name == _RUNNING:
            running += value
        elif name == _WAITING:
            waiting += value
        else:
            kv.append(value)
    return EngineLoad(int(running), int(waiting), max(kv) if kv else None)
