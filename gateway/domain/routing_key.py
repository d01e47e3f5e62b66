"""What the router may know of a chat request: its affinity key."""

from __future__ import annotations

from gateway.domain.chat import ChatRequest, Role
from gateway.routing.policies import RequestKey

# Longest session key used as is; a longer one is cut (it is only hashed).
_MAX_SESSION = 256


def request_key(request: ChatRequest) -> RequestKey:
    """The session (an explicit session id, else OpenAI's ``user``) and the
    conversation's opening: every message through the first user message.

    The opening is what all turns of one conversation share (its system
    prompt and first question), so it identifies the conversation without
    any state, while conversations that only share a system prompt still
    spread over the replicas.
    """
    opening: list[str] = []
    for message in request.messages:
        role = message.role.value if message.role is not None else ""
        opening.append(role + "\x00" + message.content)
        if message.role is Role.USER:
            break
    session = (request.session_id or request.user)[:_MAX_SESSION]
    return RequestKey(session=session, opening=tuple(opening))
