"""Public API protos <-> domain objects."""

from __future__ import annotations

from collections.abc import Sequence

from common.protojson import struct_to_json
from gateway.domain.chat import (
    NO_FEATURES,
    AudioPart,
    ChatRequest,
    ChoiceDelta,
    ContentPart,
    Features,
    FinishReason,
    FunctionTool,
    ImagePart,
    Message,
    ResponseFormat,
    ResponseFormatType,
    Role,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_types_pb2 as tpb

_ROLES = {
    pb.ROLE_SYSTEM: Role.SYSTEM,
    pb.ROLE_USER: Role.USER,
    pb.ROLE_ASSISTANT: Role.ASSISTANT,
    pb.ROLE_TOOL: Role.TOOL,
    pb.ROLE_DEVELOPER: Role.DEVELOPER,
}
FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_TOOL_MODES = {
    tpb.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    tpb.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    tpb.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
}
_FORMATS = {
    tpb.RESPONSE_FORMAT_TYPE_TEXT: ResponseFormatType.TEXT,
    tpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: ResponseFormatType.JSON_OBJECT,
    tpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: ResponseFormatType.JSON_SCHEMA,
}
_EFFORTS = {
    tpb.REASONING_EFFORT_NONE: "none",
    tpb.REASONING_EFFORT_MINIMAL: "minimal",
    tpb.REASONING_EFFORT_LOW: "low",
    tpb.REASONING_EFFORT_MEDIUM: "medium",
    tpb.REASONING_EFFORT_HIGH: "high",
    tpb.REASONING_EFFORT_XHIGH: "xhigh",
}


def _parts(parts: Sequence[tpb.ContentPart]) -> tuple[ContentPart, ...]:
    out: list[ContentPart] = []
    for part in parts:
        kind = part.WhichOneof("part")
        if kind == "image_url":
            out.append(ImagePart(part.image_url.url, part.image_url.detail))
        elif kind == "input_audio":
            out.append(AudioPart(part.input_audio.data, part.input_audio.format))
        else:
            out.append(TextPart(part.text))
    return tuple(out)


def _message(m: pb.ChatMessage) -> Message:
    return Message(
        role=_ROLES.get(m.role),
        content=m.content,
        name=m.name if m.HasField("name") else None,
        parts=_parts(m.parts) if m.parts else (),
        tool_calls=tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls
        ),
        tool_call_id=m.tool_call_id if m.HasField("tool_call_id") else None,
    )


def _tool_choice(params: pb.ChatCompletionParams) -> ToolChoice | None:
    if not params.HasField("tool_choice"):
        return None
    choice = params.tool_choice
    if choice.WhichOneof("choice") == "function_name":
        return ToolChoice(ToolChoiceMode.REQUIRED, choice.function_name)
    mode = _TOOL_MODES.get(choice.mode)
    return ToolChoice(mode) if mode is not None else None


def _response_format(params: pb.ChatCompletionParams) -> ResponseFormat | None:
    if not params.HasField("response_format"):
        return None
    fmt = params.response_format
    kind = _FORMATS.get(fmt.type)
    if kind is None or kind is ResponseFormatType.TEXT:
        return None  # text is what a model writes anyway
    if kind is ResponseFormatType.JSON_OBJECT:
        return ResponseFormat(kind)
    js = fmt.json_schema
    return ResponseFormat(
        kind,
        name=js.name,
        description=js.description,
        schema=struct_to_json(js.schema) if js.HasField("schema") else None,
        strict=js.strict if js.HasField("strict") else None,
    )


def _features(params: pb.ChatCompletionParams) -> Features:
    """The request's features; the shared empty one when it asks for none (common)."""
    if not (
        params.tools
        or params.HasField("tool_choice")
        or params.HasField("response_format")
        or params.HasField("logprobs")
        or params.HasField("top_logprobs")
        or params.logit_bias
        or params.reasoning_effort
        or params.HasField("engine_extras")
        or params.HasField("parallel_tool_calls")
        or (params.HasField("n") and params.n != 1)
    ):
        return NO_FEATURES
    return Features(
        n=params.n if params.HasField("n") and params.n > 0 else 1,
        tools=tuple(
            FunctionTool(
                name=t.function.name,
                description=t.function.description,
                parameters=(
                    struct_to_json(t.function.parameters)
                    if t.function.HasField("parameters")
                    else None
                ),
                strict=t.function.strict if t.function.HasField("strict") else None,
            )
            for t in params.tools
        ),
        tool_choice=_tool_choice(params),
        parallel_tool_calls=(
            params.parallel_tool_calls if params.HasField("parallel_tool_calls") else None
        ),
        response_format=_response_format(params),
        logprobs=params.logprobs,
        top_logprobs=params.top_logprobs if params.HasField("top_logprobs") else None,
        logit_bias=dict(params.logit_bias),
        reasoning_effort=_EFFORTS.get(params.reasoning_effort),
        engine_extras=(
            struct_to_json(params.engine_extras) if params.HasField("engine_extras") else None
        ),
    )


def _double(params: pb.ChatCompletionParams, name: str) -> float | None:
    """The double-precision value (sampling.*), else the deprecated float field."""
    if params.HasField("sampling") and params.sampling.HasField(name):  # type: ignore[arg-type]
        return float(getattr(params.sampling, name))
    if params.HasField(name):  # type: ignore[arg-type]
        return float(getattr(params, name))
    return None


def to_chat_request(params: pb.ChatCompletionParams, session_id: str = "") -> ChatRequest:
    """Convert request params; unknown roles become None and fail validation.
    ``session_id`` is the ``x-session-id`` metadata (routing affinity)."""

    return ChatRequest(
        model=params.model,
        messages=tuple(_message(m) for m in params.messages),
        # proto3 `optional`: unset stays None, so zero keeps its meaning.
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        max_completion_tokens=(
            params.max_completion_tokens if params.HasField("max_completion_tokens") else None
        ),
        temperature=_double(params, "temperature"),
        top_p=_double(params, "top_p"),
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
        presence_penalty=_double(params, "presence_penalty"),
        frequency_penalty=_double(params, "frequency_penalty"),
        n=params.n if params.HasField("n") else None,
        user=params.user,
        session_id=session_id,
        features=_features(params),
    )


def to_usage(usage: Usage) -> pb.Usage:
    """Domain usage to proto."""
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def to_logprobs(logprobs: Sequence[TokenLogprob]) -> list[tpb.TokenLogprob]:
    """Domain log probabilities to proto."""
    return [
        tpb.TokenLogprob(
            token=lp.token,
            logprob=lp.logprob,
            bytes=lp.bytes,
            top_logprobs=[
                tpb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top
            ],
        )
        for lp in logprobs
    ]


def to_choice_delta(delta: ChoiceDelta) -> pb.ChoiceDelta:
    """A rich stream event to proto."""
    return pb.ChoiceDelta(
        index=delta.index,
        content=delta.content,
        reasoning_content=delta.reasoning,
        tool_calls=[
            tpb.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in delta.tool_calls
        ],
        logprobs=to_logprobs(delta.logprobs),
    )
