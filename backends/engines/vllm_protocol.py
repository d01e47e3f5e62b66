"""Translation between the engine contract and vLLM's OpenAI-compatible HTTP API.

Pure functions, no I/O: the request body for ``/v1/chat/completions``, the
parser of its SSE stream, and the map from vLLM's errors to engine errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.engine import (
    CONTEXT_LENGTH_EXCEEDED,
    ChoiceEvent,
    Delta,
    EngineError,
    EngineEvent,
    EngineFailed,
    EngineRejectedRequest,
    EngineRequest,
    EngineUnavailable,
    Finished,
    FinishReason,
    TokenLogprob,
    ToolCallFragment,
)

# vLLM's finish reasons that end a generation normally. "abort" (the request was
# aborted inside vLLM) and "error" are failures, not reasons.
_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
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
    """The JSON body of a streamed chat completion for ``request`` (for a raw
    prompt, of a streamed ``/v1/completions`` call: ``prompt`` instead of ``messages``).

    Usage is always requested, per chunk as well (``continuous_usage_stats``):
    the sidecar contract carries exact token counts in every delta and in the
    end event whether or not the client asked for usage; the gateway decides
    what the client sees.
    """
    messages = []
    for m in request.messages:
        # Small models' chat templates know system/user/assistant; OpenAI's
        # "developer" is the newer name of "system".
        message: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            # Parts go as parts: vLLM joins text parts itself and reads images/audio.
            "content": list(m.parts) if m.parts else m.content,
        }
        if m.name is not None:
            message["name"] = m.name
        if m.tool_calls:
            message["tool_calls"] = list(m.tool_calls)
            if not m.content and not m.parts:
                message["content"] = None
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    # Engine extras first: the typed fields below win (the gateway refuses clashes).
    body: dict[str, Any] = dict(request.extras) if request.extras else {}
    body.update(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    if request.max_tokens is not None:  # unset: vLLM's default, the rest of the context
        body["max_tokens"] = request.max_tokens
    if request.prompt is not None:  # /v1/completions: the raw prompt, no chat template
        del body["messages"]
        body["prompt"] = request.prompt
    if request.stop:
        body["stop"] = list(request.stop)
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    _add_features(body, request)
    if request.prompt is not None and request.logprobs:
        # /v1/completions takes OpenAI's legacy form: the number of alternatives.
        body["logprobs"] = body.pop("top_logprobs", 0) or 0
    return orjson.dumps(body)


def _add_features(body: dict[str, Any], request: EngineRequest) -> None:
    """Tools, formats, log probabilities, n: OpenAI's own fields, which vLLM reads
    (response_format becomes its structured outputs, a named tool_choice guided
    decoding of the arguments)."""
    if request.n != 1:
        body["n"] = request.n
    if request.tools:
        body["tools"] = list(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs is not None:
            body["top_logprobs"] = request.top_logprobs
    if request.logit_bias:
        body["logit_bias"] = dict(request.logit_bias)
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort


def error_from_response(status: int, body: bytes) -> EngineError:
    """The engine error for a non-200 answer of vLLM (its OpenAI error JSON, or anything)."""
    message, param = _error_fields(body)
    if status == 400 or status == 422:
        # The client's fault (e.g. a prompt over the context): the message is
        # vLLM's own, written for API users, and reaches the client.
        reason = CONTEXT_LENGTH_EXCEEDED if "context length" in message.lower() else None
        return EngineRejectedRequest(
            message or "vLLM refused the request", _field(param, message), reason
        )
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
    the first choice's plain text, a ChoiceEvent for anything richer (another
    choice, reasoning, tool-call fragments, log probabilities), None for
    chunks that carry none, and raises EngineError for an in-stream error.
    vLLM sends one choice per chunk; a chunk with several gives a tuple.
    After ``[DONE]``, ``finished()`` gives the end event or raises when vLLM
    never said why it stopped.
    """

    reported_tokens: int = 0  # completion tokens of choice 0 already passed on
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False
    # Choices other than the first: tokens passed on, and their finish reasons.
    reported: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)

    def feed(self, payload: bytes) -> EngineEvent | tuple[EngineEvent, ...] | None:
        """One SSE data payload -> its events."""
        if payload == b"[DONE]":
            self.done = True
            return None
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            # What was wrong, never the chunk: it may hold generated text, and errors are logged.
            raise EngineFailed(
                f"vLLM sent a chunk that is not JSON ({len(payload)} bytes, "
                f"starting with {_first_byte(payload)}): {error}"
            ) from None
        if "error" in chunk:
            raise _stream_error(chunk["error"])
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
        choices = chunk.get("choices")
        if not choices:
            return None
        if len(choices) == 1:
            return self._choice(choices[0])
        events = tuple(e for c in choices if (e := self._choice(c)) is not None)
        return events or None

    def _choice(self, choice: dict[str, Any]) -> EngineEvent | None:
        index = choice.get("index", 0)
        reason = choice.get("finish_reason")
        if reason is not None:
            self.reasons[index] = reason
            if index == 0:
                self.finish_reason = reason
        delta = choice.get("delta")
        if delta is None:  # /v1/completions streams `text` where chat streams `delta.content`
            delta = {"content": choice.get("text")}
        # Plain text of the first choice: the common case, kept cheap.
        if (
            index == 0
            and not choice.get("logprobs")
            and not delta.get("tool_calls")
            and not delta.get("reasoning_content")
            and not delta.get("reasoning")
        ):
            content = delta.get("content")
            if not content:
                return None
            return Delta(content, self._count(0))
        return self._rich(index, delta, choice.get("logprobs"))

    def _rich(
        self, index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None
    ) -> EngineEvent | None:
        text = delta.get("content") or ""
        # vLLM's reasoning parsers: "reasoning_content", renamed "reasoning" later.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        calls = tuple(
            ToolCallFragment(
                index=call.get("index", 0),
                id=call.get("id") or "",
                name=(call.get("function") or {}).get("name") or "",
                arguments=(call.get("function") or {}).get("arguments") or "",
            )
            for call in delta.get("tool_calls") or ()
        )
        entries = tuple(
            TokenLogprob(
                token=entry.get("token", ""),
                logprob=float(entry.get("logprob", 0.0)),
                bytes=bytes(entry.get("bytes") or ()),
                top=tuple(
                    (t.get("token", ""), float(t.get("logprob", 0.0)), bytes(t.get("bytes") or ()))
                    for t in entry.get("top_logprobs") or ()
                ),
            )
            for entry in ((logprobs or {}).get("content") or ())
        ) or _legacy_logprobs(logprobs)
        if not (text or reasoning or calls or entries):
            return None
        return ChoiceEvent(
            index=index,
            token_count=self._count(index),
            text=text,
            reasoning=reasoning,
            tool_calls=calls,
            logprobs=entries,
        )

    def _count(self, index: int) -> int:
        """Tokens in this chunk: vLLM's per-choice running count minus what was
        passed on (tokens the detokenizer held back show up in the chunk that
        finally carries their text); one a chunk without per-chunk usage."""
        if self.completion_tokens is None:
            return 1
        before = self.reported_tokens if index == 0 else self.reported.get(index, 0)
        count = max(self.completion_tokens - before, 1)
        if index == 0:
            self.reported_tokens = before + count
        else:
            self.reported[index] = before + count
        return count

    def finished(self) -> Finished:
        """The end event, once the stream is over."""
        reason = self.finish_reason
        if not self.done or reason is None:
            raise EngineFailed("vLLM ended the stream without a finish reason")
        for seen in self.reasons.values():
            if seen == "abort":
                raise EngineFailed("vLLM aborted the request")
            if seen == "error":
                raise EngineFailed("vLLM failed while generating")
        if self.prompt_tokens is None or self.completion_tokens is None:
            raise EngineFailed("vLLM sent no usage (stream_options.include_usage)")
        choice_reasons: tuple[FinishReason, ...] = ()
        if len(self.reasons) > 1:
            choice_reasons = tuple(
                _FINISH.get(self.reasons.get(i, "stop"), FinishReason.STOP)
                for i in range(max(self.reasons) + 1)
            )
        return Finished(
            _FINISH.get(reason, FinishReason.STOP),
            self.prompt_tokens,
            self.completion_tokens,
            choice_reasons,
        )


def _first_byte(payload: bytes) -> str:
    """The kind of a payload's first byte (JSON punctuation shown as itself)."""
    first = payload[:1]
    if not first:
        return "nothing"
    if first in b'{}[]",:':
        return repr(first.decode())
    if first.isalpha():
        return "a letter"
    if first.isdigit():
        return "a digit"
    if first.isspace():
        return "whitespace"
    return "a control byte" if first[0] < 0x20 else "another byte"


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


def _legacy_logprobs(logprobs: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    """/v1/completions' form (parallel lists; alternatives as a token -> logprob map)
    as the engine contract's entries. Token bytes are the token's UTF-8."""
    if not logprobs or "tokens" not in logprobs:
        return ()
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    return tuple(
        TokenLogprob(
            token=token,
            logprob=float(values[i]) if i < len(values) and values[i] is not None else 0.0,
            bytes=token.encode(),
            top=tuple(
                (alt, float(lp), alt.encode())
                for alt, lp in ((tops[i] if i < len(tops) else None) or {}).items()
            ),
        )
        for i, token in enumerate(tokens)
    )
