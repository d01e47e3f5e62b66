"""Chat completion requests and stream events, as the domain sees them."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Role(enum.Enum):
    """Author of a chat message (OpenAI's role names)."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    DEVELOPER = "developer"


class FinishReason(enum.Enum):
    """Why generation stopped."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: Role | None
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request as received, before validation.

    ``None`` means the client did not set the field; zero is a real value.
    """

    model: str
    messages: Sequence[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    user: str = ""
    session_id: str = ""  # x-session-id: keeps a conversation on one replica (prefix cache)


@dataclass(frozen=True, slots=True)
class Generation:
    """A validated request bound to a model: what a backend is asked to do."""

    request_id: str
    model: str
    messages: Sequence[Message]
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: Sequence[str]
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one completion."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a completed generation."""

    reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class Routed:
    """The first event of a stream: which model and endpoint serve it
    (a fallback model when the requested one could not)."""

    model: str
    backend: str


# A backend stream yields text deltas as plain ``str`` (the per-token hot path stays
# allocation-light) and ends with exactly one ``Finished``.
StreamEvent = str | Finished
