"""The sidecar contract (llmgw.backend.v1) <-> the engine's request and events.

Structured values become OpenAI's JSON shapes, which both engines consume
(the vllm engine forwards them, the sim reads them).
"""

from __future__ import annotations

from typing import Any

from backends.engine import (
    ChoiceEvent,
    EmbedRequest,
    EngineMessage,
    EngineRejectedRequest,
    EngineRequest,
    FinishReason,
    JsonObject,
)
from common.protojson import struct_to_json
from llmgw.backend.v1 import backend_pb2 as pb
from llmgw.backend.v1 import generate_types_pb2 as tpb

_ROLE_NAMES = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
    pb.ROLE_DEVELOPER: "developer",
}
FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_TOOL_MODES = {
    tpb.TOOL_CHOICE_MODE_NONE: "none",
    tpb.TOOL_CHOICE_MODE_AUTO: "auto",
    tpb.TOOL_CHOICE_MODE_REQUIRED: "required",
}
_FORMATS = {
    tpb.RESPONSE_FORMAT_TYPE_TEXT: "text",
    tpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    tpb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}
_EFFORTS = {
    tpb.REASONING_EFFORT_NONE: "none",
    tpb.REASONING_EFFORT_MINIMAL: "minimal",
    tpb.REASONING_EFFORT_LOW: "low",
    tpb.REASONING_EFFORT_MEDIUM: "medium",
    tpb.REASONING_EFFORT_HIGH: "high",
    tpb.REASONING_EFFORT_XHIGH: "xhigh",
}


def _part(part: tpb.ContentPart) -> JsonObject:
    kind = part.WhichOneof("part")
    if kind == "image_url":
        image: dict[str, str] = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        return {
            "type": "input_audio",
            "input_audio": {"data": part.input_audio.data, "format": part.input_audio.format},
        }
    return {"type": "text", "text": part.text}


def _message(i: int, m: pb.Message) -> EngineMessage:
    role = _ROLE_NAMES.get(m.role)
    if role is None:
        raise EngineRejectedRequest("role must be set", field=f"messages[{i}].role")
    parts = tuple(_part(p) for p in m.parts)
    content = m.content
    if parts:
        # vLLM joins text parts with a newline; so does every engine here.
        content = "\n".join(p["text"] for p in parts if p["type"] == "text")
    return EngineMessage(
        role=role,
        content=content,
        name=m.name if m.HasField("name") else None,
        parts=parts,
        tool_calls=tuple(
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in m.tool_calls
        ),
        tool_call_id=m.tool_call_id if m.HasField("tool_call_id") else None,
    )


def _tool(tool: tpb.Tool) -> JsonObject:
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if tool.function.HasField("parameters"):
        function["parameters"] = struct_to_json(tool.function.parameters)
    if tool.function.HasField("strict"):
        function["strict"] = tool.function.strict
    return {"type": "function", "function": function}


def _tool_choice(request: pb.GenerateRequest) -> str | JsonObject | None:
    if not request.HasField("tool_choice"):
        return None
    choice = request.tool_choice
    if choice.WhichOneof("choice") == "function_name":
        return {"type": "function", "function": {"name": choice.function_name}}
    return _TOOL_MODES.get(choice.mode)


def _response_format(request: pb.GenerateRequest) -> JsonObject | None:
    if not request.HasField("response_format"):
        return None
    kind = _FORMATS.get(request.response_format.type)
    if kind is None:
        return None
    if kind != "json_schema":
        return {"type": kind}
    js = request.response_format.json_schema
    schema: dict[str, Any] = {"name": js.name}
    if js.description:
        schema["description"] = js.description
    if js.HasField("schema"):
        schema["schema"] = struct_to_json(js.schema)
    if js.HasField("strict"):
        schema["strict"] = js.strict
    return {"type": "json_schema", "json_schema": schema}


def _double(s: pb.SamplingParams, name: str) -> float | None:
    if s.HasField(f"{name}_double"):  # type: ignore[arg-type]
        return float(getattr(s, f"{name}_double"))
    if s.HasField(name):  # type: ignore[arg-type]  # a gateway of the previous version
        return float(getattr(s, name))
    return None


def to_engine_request(request: pb.GenerateRequest) -> EngineRequest:
    """Convert the wire request; raise EngineRejectedRequest on a malformed one."""
    messages = [_message(i, m) for i, m in enumerate(request.messages)]
    prompt = request.prompt if request.HasField("prompt") else None
    if prompt is None and not messages:
        raise EngineRejectedRequest("at least one message is required")
    if prompt is not None and messages:
        raise EngineRejectedRequest("a request has either messages or a prompt")
    s = request.sampling
    if s.max_tokens < 0:
        raise EngineRejectedRequest("max_tokens must be at least 1", field="sampling.max_tokens")
    return EngineRequest(
        request_id=request.request_id,
        model=request.model,
        messages=messages,
        max_tokens=s.max_tokens or None,
        temperature=_double(s, "temperature"),
        top_p=_double(s, "top_p"),
        stop=tuple(s.stop),
        seed=s.seed if s.HasField("seed") else None,
        presence_penalty=_double(s, "presence_penalty"),
        frequency_penalty=_double(s, "frequency_penalty"),
        n=max(s.n, 1),
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs if s.HasField("top_logprobs") else None,
        logit_bias={str(k): v for k, v in s.logit_bias.items()},
        tools=tuple(_tool(t) for t in request.tools),
        tool_choice=_tool_choice(request),
        parallel_tool_calls=(
            request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
        ),
        response_format=_response_format(request),
        reasoning_effort=_EFFORTS.get(request.reasoning_effort),
        extras=struct_to_json(request.engine_extras) if request.HasField("engine_extras") else None,
        prompt=prompt,
    )


def to_embed_request(request: pb.EmbedRequest) -> EmbedRequest:
    """Convert the wire request; raise EngineRejectedRequest on a malformed one."""
    inputs: list[str | tuple[int, ...]] = []
    for i, item in enumerate(request.inputs):
        kind = item.WhichOneof("input")
        value: str | tuple[int, ...] = tuple(item.tokens.ids) if kind == "tokens" else item.text
        if not value:
            raise EngineRejectedRequest("an input must not be empty", field=f"input[{i}]")
        inputs.append(value)
    if not inputs:
        raise EngineRejectedRequest("at least one input is required", field="input")
    return EmbedRequest(
        request_id=request.request_id,
        model=request.model,
        inputs=inputs,
        dimensions=request.dimensions if request.HasField("dimensions") else None,
    )


def to_choice_message(event: ChoiceEvent) -> pb.GenerateResponse:
    """A rich engine event on the wire."""
    return pb.GenerateResponse(
        choice=pb.ChoiceDelta(
            index=event.index,
            text=event.text,
            reasoning=event.reasoning,
            token_count=event.token_count,
            tool_calls=[
                tpb.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
                for c in event.tool_calls
            ],
            logprobs=[
                tpb.TokenLogprob(
                    token=lp.token,
                    logprob=lp.logprob,
                    bytes=lp.bytes,
                    top_logprobs=[
                        tpb.TopLogprob(token=t, logprob=p, bytes=b) for t, p, b in lp.top
                    ],
                )
                for lp in event.logprobs
            ],
        )
    )
