"""Domain generations <-> the sidecar contract (llmgw.backend.v1)."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from gateway.domain.chat import (
    AudioPart,
    ChoiceDelta,
    Features,
    Generation,
    ImagePart,
    Message,
    ResponseFormatType,
    Role,
    TokenLogprob,
    ToolCallDelta,
    ToolChoiceMode,
    TopLogprob,
)
from gateway.domain.embedding import EmbeddingJob
from llmgw.backend.v1 import backend_pb2 as pb
from llmgw.backend.v1 import generate_types_pb2 as tpb

_ROLES = {
    Role.SYSTEM: pb.ROLE_SYSTEM,
    Role.USER: pb.ROLE_USER,
    Role.ASSISTANT: pb.ROLE_ASSISTANT,
    Role.TOOL: pb.ROLE_TOOL,
    Role.DEVELOPER: pb.ROLE_DEVELOPER,
}
_TOOL_MODES = {
    ToolChoiceMode.NONE: tpb.TOOL_CHOICE_MODE_NONE,
    ToolChoiceMode.AUTO: tpb.TOOL_CHOICE_MODE_AUTO,
    ToolChoiceMode.REQUIRED: tpb.TOOL_CHOICE_MODE_REQUIRED,
}
_FORMATS = {
    ResponseFormatType.TEXT: tpb.RESPONSE_FORMAT_TYPE_TEXT,
    ResponseFormatType.JSON_OBJECT: tpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    ResponseFormatType.JSON_SCHEMA: tpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}
_EFFORTS = {
    "none": tpb.REASONING_EFFORT_NONE,
    "minimal": tpb.REASONING_EFFORT_MINIMAL,
    "low": tpb.REASONING_EFFORT_LOW,
    "medium": tpb.REASONING_EFFORT_MEDIUM,
    "high": tpb.REASONING_EFFORT_HIGH,
    "xhigh": tpb.REASONING_EFFORT_XHIGH,
}


def _struct(value: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _message(m: Message) -> pb.Message:
    assert m.role is not None, "validated requests always carry a role"
    message = pb.Message(role=_ROLES[m.role], content=m.content)
    if m.name is not None:
        message.name = m.name
    for part in m.parts:
        if type(part) is ImagePart:
            message.parts.add(image_url=tpb.ImageUrl(url=part.url, detail=part.detail))
        elif type(part) is AudioPart:
            message.parts.add(input_audio=tpb.InputAudio(data=part.data, format=part.format))
        else:
            message.parts.add(text=part.text)  # type: ignore[union-attr]
    for call in m.tool_calls:
        message.tool_calls.add(
            id=call.id,
            type="function",
            function=tpb.FunctionCall(name=call.name, arguments=call.arguments),
        )
    if m.tool_call_id is not None:
        message.tool_call_id = m.tool_call_id
    return message


def _add_features(request: pb.GenerateRequest, features: Features) -> None:
    sampling = request.sampling
    sampling.n = features.n
    if features.logprobs:
        sampling.logprobs = True
    if features.top_logprobs is not None:
        sampling.top_logprobs = features.top_logprobs
    for token, bias in features.logit_bias.items():
        sampling.logit_bias[token] = bias
    for tool in features.tools:
        function = tpb.FunctionDefinition(name=tool.name, description=tool.description)
        if tool.parameters is not None:
            function.parameters.CopyFrom(_struct(tool.parameters))
        if tool.strict is not None:
            function.strict = tool.strict
        request.tools.add(type="function", function=function)
    choice = features.tool_choice
    if choice is not None:
        if choice.function is not None:
            request.tool_choice.function_name = choice.function
        else:
            request.tool_choice.mode = _TOOL_MODES[choice.mode]
    if features.parallel_tool_calls is not None:
        request.parallel_tool_calls = features.parallel_tool_calls
    fmt = features.response_format
    if fmt is not None:
        request.response_format.type = _FORMATS[fmt.type]
        if fmt.type is ResponseFormatType.JSON_SCHEMA:
            js = request.response_format.json_schema
            js.name, js.description = fmt.name, fmt.description
            if fmt.schema is not None:
                js.schema.CopyFrom(_struct(fmt.schema))
            if fmt.strict is not None:
                js.strict = fmt.strict
    if features.reasoning_effort is not None:
        request.reasoning_effort = _EFFORTS.get(
            features.reasoning_effort, tpb.REASONING_EFFORT_UNSPECIFIED
        )
    if features.engine_extras:
        request.engine_extras.CopyFrom(_struct(features.engine_extras))


def to_backend_request(generation: Generation) -> pb.GenerateRequest:
    """Convert a generation to the sidecar contract."""
    sampling = pb.SamplingParams(max_tokens=generation.max_tokens or 0, stop=list(generation.stop))
    if generation.temperature is not None:
        sampling.temperature_double = generation.temperature
    if generation.top_p is not None:
        sampling.top_p_double = generation.top_p
    if generation.seed is not None:
        sampling.seed = generation.seed
    if generation.presence_penalty is not None:
        sampling.presence_penalty_double = generation.presence_penalty
    if generation.frequency_penalty is not None:
        sampling.frequency_penalty_double = generation.frequency_penalty
    request = pb.GenerateRequest(
        request_id=generation.request_id,
        model=generation.model,
        messages=[_message(m) for m in generation.messages],
        sampling=sampling,
    )
    _add_features(request, generation.features)
    if generation.prompt is not None:
        request.prompt = generation.prompt
    return request


def to_embed_request(job: EmbeddingJob) -> pb.EmbedRequest:
    """Convert an embedding job to the sidecar contract."""
    request = pb.EmbedRequest(request_id=job.request_id, model=job.model)
    for item in job.inputs:
        if isinstance(item, str):
            request.inputs.add(text=item)
        else:
            request.inputs.add(tokens=pb.EmbedTokenIds(ids=item))
    if job.dimensions is not None:
        request.dimensions = job.dimensions
    return request


def to_choice_delta(event: pb.ChoiceDelta) -> ChoiceDelta:
    """A rich backend event to the domain's (not on the plain-text path)."""
    return ChoiceDelta(
        index=event.index,
        content=event.text,
        reasoning=event.reasoning,
        tool_calls=tuple(
            ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in event.tool_calls
        ),
        logprobs=tuple(
            TokenLogprob(
                lp.token,
                lp.logprob,
                lp.bytes,
                tuple(TopLogprob(t.token, t.logprob, t.bytes) for t in lp.top_logprobs),
            )
            for lp in event.logprobs
        ),
        tokens=event.token_count,
    )
