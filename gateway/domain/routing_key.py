"""What the router may know of a chat request: its affinity key."""

from __future__ import annotations

from gateway.domain.chat import ChatRequest, Role
from gateway.domain.embedding import EmbeddingRequest
from gateway.routing.policies import RequestKey

# Longest session key used as is; a longer one is cut (it is only hashed).
_MAX_SESSION = 256


def request_key(request: ChatRequest | EmbeddingRequest) -> RequestKey:
    """The session (an explicit session id, else OpenAI's ``user``) and the
    conversation's opening: every message through the first user message
    (a raw prompt is its own opening; embeddings have none).

    The opening is what all turns of one conversation share (its system
    prompt and first question), so it identifies the conversation without
    any state, while conversations that only share a system prompt still
    spread over the replicas.
    """
    if isinstance(request, EmbeddingRequest):
        return RequestKey(session=request.user[:_MAX_SESSION], opening=())
    opening: list[str] = [] if request.prompt is None else ["\x00" + request.prompt]
    for message in request.messages:
        role = message.role.value if message.role is not None else ""
        opening.append(role + "\x00" + message.content)
        if message.role is Role.USER:
            break
    session = (request.session_id or request.user)[:_MAX_SESSION]
    return RequestKey(session=session, opening=tuple(opening))
