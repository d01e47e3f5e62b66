"""Parsing an OpenAI chat completion body and translating it to the gateway's proto.

Only shape and types are checked here (what the proto cannot express);
every rule about values (ranges, n, roles, tool choice, limits) is the
gateway's, so gRPC and REST clients get the same answers.

Three kinds of top-level fields:

- OpenAI's fields this API types (``ChatCompletionBody``): translated;
- OpenAI's fields that change nothing here (``_IGNORED``: documented
  defaults and no-ops such as ``store`` or ``service_tier``): accepted and
  ignored, never refused;
- anything else is an engine-specific field (what the OpenAI SDK sends as
  ``extra_body``: vLLM's ``top_k``, ``min_p``, ``chat_template_kwargs``...):
  carried in ``engine_extras`` to the engine unchanged (the gateway caps
  their size). OpenAI fields that ask for something no engine here does
  (``audio`` output, ``prediction``, web search) are refused by name.
"""

from __future__ import annotations

from typing import Any, Literal

from google.protobuf import struct_pb2
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_types_pb2 as tpb
from rest_shim.errors import invalid_request
from rest_shim.parsing import (
    INT32,
    Strict,
    add_seed_and_stop,
    clamp_int32,
    parse_json_object,
    type_error,
)
from rest_shim.request_limits import DEFAULT_LIMITS, RequestLimits, check_counts

_ROLES = {
    "system": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
    "developer": pb.ROLE_DEVELOPER,
}
_TOOL_MODES = {
    "none": tpb.TOOL_CHOICE_MODE_NONE,
    "auto": tpb.TOOL_CHOICE_MODE_AUTO,
    "required": tpb.TOOL_CHOICE_MODE_REQUIRED,
}
_FORMATS = {
    "text": tpb.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": tpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": tpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}
_EFFORTS = {
    "none": tpb.REASONING_EFFORT_NONE,
    "minimal": tpb.REASONING_EFFORT_MINIMAL,
    "low": tpb.REASONING_EFFORT_LOW,
    "medium": tpb.REASONING_EFFORT_MEDIUM,
    "high": tpb.REASONING_EFFORT_HIGH,
    "xhigh": tpb.REASONING_EFFORT_XHIGH,
}

# OpenAI parameters accepted and ignored: documented defaults and no-ops that
# change nothing about the answer here.
_IGNORED = frozenset(
    {
        "store", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention",
        "safety_identifier", "verbosity",
    }
)  # fmt: skip
# OpenAI parameters asking for what no engine here does: refused unless null,
# never silently dropped.
_UNSUPPORTED = frozenset(
    {"audio", "prediction", "web_search_options", "functions", "function_call"}
)
_MESSAGE_UNSUPPORTED = frozenset({"function_call", "audio"})


class ImageUrlBody(Strict):
    """``image_url`` of a content part."""

    url: str
    detail: str | None = None


class InputAudioBody(Strict):
    """``input_audio`` of a content part."""

    data: str
    format: str


class ContentPartBody(Strict):
    """A content part: text, image_url or input_audio (other kinds are
    refused by name after parsing, so their fields are not errors here)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    type: str
    text: str | None = None
    image_url: ImageUrlBody | None = None
    input_audio: InputAudioBody | None = None


class FunctionCallBody(Strict):
    """``function`` of a tool call."""

    name: str
    arguments: str


class ToolCallBody(Strict):
    """A tool call of an assistant message, replayed by the client."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallBody


class MessageBody(Strict):
    """One message as OpenAI clients send it."""

    role: str
    content: str | list[ContentPartBody] | None = None
    name: str | None = None
    # Sent back verbatim by clients that replay assistant messages.
    refusal: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None
    annotations: list[Any] | None = None
    # Reasoning of a replayed assistant message; models do not read it back.
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionBody(Strict):
    """``function`` of a tool."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolBody(Strict):
    """A function tool."""

    type: Literal["function"]
    function: FunctionBody


class NamedFunction(Strict):
    """``function`` of a named tool choice."""

    name: str


class ToolChoiceBody(Strict):
    """``{"type": "function", "function": {"name": ...}}``."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaBody(Strict):
    """``json_schema`` of a response format."""

    name: str
    description: str | None = None
    # "schema" shadows a BaseModel attribute: an alias keeps the wire name.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatBody(Strict):
    """``response_format``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaBody | None = None


class StreamOptions(Strict):
    """``stream_options`` (``include_obfuscation`` is accepted and ignored:
    there is no obfuscation field to leave out)."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatCompletionBody(Strict):
    """The typed parameters of POST /v1/chat/completions."""

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
    tools: list[ToolBody] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceBody | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatBody | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    modalities: list[str] | None = None
    # Engine-specific fields: every top-level key no other field claims.
    _extras: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def extras(self) -> dict[str, Any]:
        """Engine-specific fields (the SDK's extra_body), forwarded unchanged."""
        return self._extras


_TYPED = frozenset(ChatCompletionBody.model_fields)
_FIELD_NAMES = (
    frozenset(ChatCompletionBody.model_fields)
    | frozenset(MessageBody.model_fields)
    | frozenset(ContentPartBody.model_fields)
    | frozenset(StreamOptions.model_fields)
    | frozenset(ToolBody.model_fields)
    | frozenset(FunctionBody.model_fields)
    | frozenset(ResponseFormatBody.model_fields)
    | frozenset(JsonSchemaBody.model_fields)
    | frozenset(ToolCallBody.model_fields)
    | frozenset(FunctionCallBody.model_fields)
    | frozenset(ImageUrlBody.model_fields)
    | frozenset(InputAudioBody.model_fields)
    | {"schema"}
)


def parse_body(raw: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> ChatCompletionBody:
    """Decode and type-check a request body; raise ApiError (400) naming the problem."""
    data = parse_json_object(raw)
    check_counts(data, limits)  # before any per-message work
    extras = {}
    for key, value in data.items():
        if key in _TYPED or key in _IGNORED:
            continue
        if key in _UNSUPPORTED:
            if value not in (None, False, [], {}):
                raise invalid_request(
                    f"'{key}' is not supported by this gateway.",
                    param=key,
                    code="unsupported_parameter",
                )
            continue
        extras[key] = value
    try:
        body = ChatCompletionBody.model_validate(data)
    except ValidationError as error:
        raise type_error(error, _param_path) from None
    body._extras = extras
    _check_shapes(body)
    return body


def _check_shapes(body: ChatCompletionBody) -> None:
    """What the types alone do not say: supported part types, output modalities."""
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
                if getattr(part, part.type, None) is None or part.type not in (
                    "text",
                    "image_url",
                    "input_audio",
                ):
                    raise invalid_request(
                        f"Content parts of type '{part.type}' are not supported; use 'text', "
                        "'image_url' or 'input_audio' with its matching field.",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_parameter",
                    )
    if body.modalities and any(m != "text" for m in body.modalities):
        raise invalid_request(
            "Only the 'text' output modality is supported.",
            param="modalities",
            code="unsupported_parameter",
        )
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        raise invalid_request(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
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


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _add_message(params: pb.ChatCompletionParams, message: MessageBody) -> None:
    item = params.messages.add(role=_ROLES.get(message.role, pb.ROLE_UNSPECIFIED))
    content = message.content
    if isinstance(content, list):
        for part in content:
            if part.type == "image_url" and part.image_url is not None:
                item.parts.add(
                    image_url=tpb.ImageUrl(
                        url=part.image_url.url, detail=part.image_url.detail or ""
                    )
                )
            elif part.type == "input_audio" and part.input_audio is not None:
                item.parts.add(
                    input_audio=tpb.InputAudio(
                        data=part.input_audio.data, format=part.input_audio.format
                    )
                )
            else:
                item.parts.add(text=part.text or "")
        # Text parts joined as vLLM joins them, for readers of `content`.
        item.content = "\n".join(p.text or "" for p in content if p.type == "text")
    elif content:
        item.content = content
    if message.name is not None:
        item.name = message.name
    for call in message.tool_calls or ():
        item.tool_calls.add(
            id=call.id,
            type="function",
            function=tpb.FunctionCall(name=call.function.name, arguments=call.function.arguments),
        )
    if message.tool_call_id is not None:
        item.tool_call_id = message.tool_call_id


def to_params(body: ChatCompletionBody) -> pb.ChatCompletionParams:
    """Translate a parsed body to the gateway's request parameters."""
    params = pb.ChatCompletionParams(model=body.model, user=body.user or "")
    for message in body.messages:
        _add_message(params, message)
    if body.max_tokens is not None:
        params.max_tokens = clamp_int32(body.max_tokens)
    if body.max_completion_tokens is not None:
        params.max_completion_tokens = clamp_int32(body.max_completion_tokens)
    if body.n is not None:
        params.n = clamp_int32(body.n)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(params.sampling, name, value)
    add_seed_and_stop(params, body)
    _add_features(params, body)
    return params


def _add_features(params: pb.ChatCompletionParams, body: ChatCompletionBody) -> None:
    for tool in body.tools or ():
        function = tpb.FunctionDefinition(
            name=tool.function.name, description=tool.function.description or ""
        )
        if tool.function.parameters is not None:
            function.parameters.CopyFrom(_struct(tool.function.parameters))
        if tool.function.strict is not None:
            function.strict = tool.function.strict
        params.tools.add(type="function", function=function)
    choice = body.tool_choice
    if isinstance(choice, str):
        params.tool_choice.mode = _TOOL_MODES[choice]
    elif choice is not None:
        params.tool_choice.function_name = choice.function.name
    if body.parallel_tool_calls is not None:
        params.parallel_tool_calls = body.parallel_tool_calls
    fmt = body.response_format
    if fmt is not None:
        params.response_format.type = _FORMATS[fmt.type]
        if fmt.type == "json_schema" and fmt.json_schema is not None:
            js = params.response_format.json_schema
            js.name = fmt.json_schema.name
            js.description = fmt.json_schema.description or ""
            if fmt.json_schema.schema_ is not None:
                js.schema.CopyFrom(_struct(fmt.json_schema.schema_))
            if fmt.json_schema.strict is not None:
                js.strict = fmt.json_schema.strict
    if body.logprobs is not None:
        params.logprobs = body.logprobs
    if body.top_logprobs is not None:
        params.top_logprobs = clamp_int32(body.top_logprobs)
    for token, bias in (body.logit_bias or {}).items():
        try:
            token_id = int(token)
        except ValueError:
            token_id = -1
        if not INT32[0] <= token_id <= INT32[1] or token_id < 0:
            raise invalid_request(
                f"Invalid key in 'logit_bias': {token!r} is not a token id.", param="logit_bias"
            )
        params.logit_bias[token_id] = bias
    if body.reasoning_effort is not None:
        params.reasoning_effort = _EFFORTS[body.reasoning_effort]
    if body.extras:
        params.engine_extras.CopyFrom(_struct(body.extras))
