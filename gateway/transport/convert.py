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


def to_chat_request(params: pb.ChatCompletionParams, session_id: str = "") -> ChatRequest:
    """Convert request params; unknown roles become None and fail validation.
    ``session_id`` is the ``x-session-id`` metadata (routing affinity)."""

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
        # proto3 `optional`: unset stays None, so zero keeps its meaning.
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        max_completion_tokens=(
            params.max_completion_tokens if params.HasField("max_completion_tokens") else None
        ),
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
        presence_penalty=params.presence_penalty if params.HasField("presence_penalty") else None,
        frequency_penalty=(
            params.frequency_penalty if params.HasField("frequency_penalty") else None
        ),
        n=params.n if params.HasField("n") else None,
        user=params.user,
        session_id=session_id,
    )


def to_usage(usage: Usage) -> pb.Usage:
    """Domain usage to proto."""
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
