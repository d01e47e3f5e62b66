"""Public API protos <-> domain objects."""

from __future__ import annotations

from gateway.domain.chat import ChatRequest, FinishReason, Message, Role, Usage
from llmgw.v1 import chat_pb2 as pb

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
}


def to_chat_request(params: pb.ChatCompletionParams) -> ChatRequest:
    """Convert request params; unknown roles become None and fail validation."""

    def opt(name: str) -> object:
        return getattr(params, name) if params.HasField(name) else None

    return ChatRequest(
        model=params.model,
        messages=tuple(
            Message(
                role=_ROLES.get(m.role),
                content=m.content,
                name=m.name if m.HasField("name") else None,
            )
            for m in params.messages
        ),
        max_tokens=opt("max_tokens"),  # type: ignore[arg-type]
        max_completion_tokens=opt("max_completion_tokens"),  # type: ignore[arg-type]
        temperature=opt("temperature"),  # type: ignore[arg-type]
        top_p=opt("top_p"),  # type: ignore[arg-type]
        stop=tuple(params.stop),
        seed=opt("seed"),  # type: ignore[arg-type]
        presence_penalty=opt("presence_penalty"),  # type: ignore[arg-type]
        frequency_penalty=opt("frequency_penalty"),  # type: ignore[arg-type]
        n=opt("n"),  # type: ignore[arg-type]
        user=params.user,
    )


def to_usage(usage: Usage) -> pb.Usage:
    """Domain usage to proto."""
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
