"""Parsing an OpenAI chat completion body and translating it to the gateway's proto.

Only shape and types are checked here (what the proto cannot express);
every rule about values (ranges, n, roles, limits) is the gateway's, so gRPC
and REST clients get the same answers.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from llmgw.v1 import chat_pb2 as pb
from rest_shim.errors import ApiError, invalid_request
from rest_shim.request_limits import DEFAULT_LIMITS, RequestLimits, check_counts

_INT32_MAX = 2**31 - 1
_INT64 = (-(2**63), 2**63 - 1)

_ROLES = {
    "system": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
    "developer": pb.ROLE_DEVELOPER,
}

# OpenAI parameters accepted and ignored: they change nothing about the answer.
_IGNORED = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# OpenAI parameters this gateway cannot honour: refused unless null, never silently dropped.
_UNSUPPORTED = frozenset(
    {
        "tools", "tool_choice", "functions", "function_call", "response_format", "audio",
        "modalities", "prediction", "reasoning_effort", "web_search_options", "logprobs",
        "top_logprobs", "logit_bias", "verbosity",
    }
)  # fmt: skip
_MESSAGE_UNSUPPORTED = frozenset({"tool_calls", "function_call", "audio"})


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    """A text content part (the only kind supported)."""

    type: str
    text: str


class MessageBody(_Strict):
    """One message as OpenAI clients send it."""

    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    # Sent back verbatim by clients that replay assistant messages; accepted when empty.
    refusal: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None
    annotations: list[Any] | None = None


class StreamOptions(_Strict):
    """``stream_options``."""

    include_usage: bool | None = None


class ChatCompletionBody(_Strict):
    """The known, supported parameters of POST /v1/chat/completions."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    messages: list[MessageBody]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


_KNOWN = frozenset(ChatCompletionBody.model_fields) | _IGNORED | _UNSUPPORTED
_FIELD_NAMES = (
    frozenset(ChatCompletionBody.model_fields)
    | frozenset(MessageBody.model_fields)
    | frozenset(TextPart.model_fields)
    | frozenset(StreamOptions.model_fields)
)


def parse_body(raw: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> ChatCompletionBody:
    """Decode and type-check a request body; raise ApiError (400) naming the problem."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. The API expects a JSON payload."
        ) from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.")
    check_counts(data, limits)  # before any per-message work
    for key, value in data.items():
        if key not in _KNOWN:
            raise invalid_request(f"Unrecognized request argument supplied: {key}", param=key)
        if key in _UNSUPPORTED and value not in (None, False, [], {}):
            raise invalid_request(
                f"'{key}' is not supported by this gateway.",
                param=key,
                code="unsupported_parameter",
            )
    try:
        body = ChatCompletionBody.model_validate(data)
    except ValidationError as error:
        raise _type_error(error) from None
    for i, message in enumerate(body.messages):
        for key in _MESSAGE_UNSUPPORTED:
            if getattr(message, key) not in (None, []):
                raise invalid_request(
                    f"'messages[{i}].{key}' is not supported by this gateway.",
                    param=f"messages[{i}].{key}",
                    code="unsupported_parameter",
                )
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type != "text":
                    raise invalid_request(
                        f"Content parts of type '{part.type}' are not supported; use 'text'.",
                        param=f"messages[{i}].content[{j}].type",
                        code="unsupported_parameter",
                    )
    return body


def _type_error(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    param = _param_path(first["loc"])
    if first["type"] == "missing":
        return invalid_request(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return invalid_request(
        f"Invalid type for '{param}': {first['msg'].lower()}.", param=param, code="invalid_type"
    )


def _param_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'; drops pydantic's union tags."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _FIELD_NAMES:
            path += f".{part}" if path else part
    return path


def _clamp_int32(value: int) -> int:
    # Out-of-range values keep their sign so the gateway reports them properly.
    return max(-1, min(value, _INT32_MAX))


def to_params(body: ChatCompletionBody) -> pb.ChatCompletionParams:
    """Translate a parsed body to the gateway's request parameters."""
    params = pb.ChatCompletionParams(model=body.model, user=body.user or "")
    for message in body.messages:
        content = message.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        item = params.messages.add(
            role=_ROLES.get(message.role, pb.ROLE_UNSPECIFIED), content=content or ""
        )
        if message.name is not None:
            item.name = message.name
    if body.max_tokens is not None:
        params.max_tokens = _clamp_int32(body.max_tokens)
    if body.max_completion_tokens is not None:
        params.max_completion_tokens = _clamp_int32(body.max_completion_tokens)
    if body.n is not None:
        params.n = _clamp_int32(body.n)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(params, name, value)
    if body.seed is not None:
        if not _INT64[0] <= body.seed <= _INT64[1]:
            raise invalid_request("'seed' must fit in a signed 64-bit integer.", param="seed")
        params.seed = body.seed
    if isinstance(body.stop, str):
        params.stop.append(body.stop)
    elif body.stop:
        params.stop.extend(body.stop)
    return params
