"""Generation requests (chat, and raw-prompt completions) and stream events, as the
domain sees them."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class TextPart:
    """A text content part."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image content part (URL or data: URL)."""

    url: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AudioPart:
    """A base64 audio content part."""

    data: str
    format: str


ContentPart = TextPart | ImagePart | AudioPart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call made by an assistant message."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: Role | None
    content: str
    name: str | None = None
    parts: Sequence[ContentPart] = ()
    tool_calls: Sequence[ToolCall] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceMode(enum.Enum):
    """How the model may use tools."""

    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A mode, or one named function (``function`` set, mode REQUIRED)."""

    mode: ToolChoiceMode
    function: str | None = None


class ResponseFormatType(enum.Enum):
    """Format of the answer."""

    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """OpenAI's response_format; ``schema`` for JSON_SCHEMA."""

    type: ResponseFormatType
    name: str = ""
    description: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class Features:
    """What a request asks for beyond plain sampled text: tools, formats,
    log probabilities, several choices, engine extras. Passed from the
    request to the backend unchanged once validated."""

    n: int = 1
    tools: Sequence[FunctionTool] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    reasoning_effort: str | None = None
    engine_extras: Mapping[str, Any] | None = None


NO_FEATURES = Features()


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
    features: Features = NO_FEATURES
    # A raw prompt (legacy completions) instead of messages: continued as
    # written, no chat template. Exactly one of prompt and messages is given.
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class FanOut:
    """One client request served as one generation per choice: a legacy
    completions call with several prompts or ``n``. It is admitted, rate-limited
    and metered as one request; ``requests`` are prompt-major (choice ``i``
    continues prompt ``i // n``)."""

    requests: Sequence[ChatRequest]
    n: int = 1

    @property
    def prompts(self) -> Sequence[ChatRequest]:
        """One choice of each prompt."""
        return self.requests[:: self.n]


@dataclass(frozen=True, slots=True)
class Generation:
    """A validated request bound to a model: what a backend is asked to do."""

    request_id: str
    model: str
    messages: Sequence[Message]
    # None: the engine's own limit (the context minus the prompt).
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: Sequence[str]
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    features: Features = NO_FEATURES
    prompt: str | None = None


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
    """The last event of a completed generation.

    An embedding call is a stream of no text and one Finished that carries
    the vectors, so it goes through the same routing, retries and accounting.
    """

    reason: FinishReason
    usage: Usage
    # Every choice's reason, by index, when n > 1 (``reason`` is choice 0's).
    choice_reasons: Sequence[FinishReason] = ()
    vectors: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log probability of one generated token and its likely alternatives."""

    token: str
    logprob: float
    bytes: bytes
    top: Sequence[TopLogprob] = ()


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call: the first carries id and name, later ones arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ChoiceDelta:
    """Anything a plain ``str`` delta cannot say: another choice's text,
    reasoning text, tool-call fragments, log probabilities."""

    index: int = 0
    content: str = ""
    reasoning: str = ""
    tool_calls: Sequence[ToolCallDelta] = ()
    logprobs: Sequence[TokenLogprob] = ()
    tokens: int = 0  # how many tokens this event holds (for metering)


@dataclass(frozen=True, slots=True)
class Routed:
    """The first event of a stream: which model and endpoint serve it
    (a fallback model when the requested one could not)."""

    model: str
    backend: str


# A backend stream yields the first choice's text deltas as ``(text, tokens)``
# tuples (the per-token hot path stays allocation-light: one small tuple),
# ChoiceDelta for anything richer, and ends with exactly one ``Finished``. The
# token counts let the gateway meter exactly what a client received when a
# stream ends early (cancelled, failed, cut at shutdown).
Delta = tuple[str, int]
StreamEvent = Delta | ChoiceDelta | Finished
