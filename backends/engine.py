"""The engine interface a sidecar serves, free of any transport."""

from __future__ import annotations

import builtins
import enum
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class FinishReason(enum.Enum):
    """Why an engine stopped generating."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"


# Engines speak OpenAI's JSON shapes for everything structured (content parts,
# tool calls, tools, tool_choice, response_format): both engines consume them
# as such (the vllm engine forwards them, the sim reads them).
JsonObject = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EngineMessage:
    """One chat message (role is the OpenAI role name)."""

    role: str
    content: str
    name: str | None = None
    # OpenAI content parts ({"type": "text", "text": ...}, image_url, input_audio);
    # when set, ``content`` is their text parts joined with "\n".
    parts: Sequence[JsonObject] = ()
    # OpenAI tool calls of an assistant message ({"id", "type", "function"}).
    tool_calls: Sequence[JsonObject] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request, already validated by the gateway."""

    request_id: str
    model: str
    messages: Sequence[EngineMessage]
    # None: the engine's own limit (its context minus the prompt, as vLLM does).
    max_tokens: int | None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: Mapping[str, float] = field(default_factory=dict)
    tools: Sequence[JsonObject] = ()
    # "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.
    tool_choice: str | JsonObject | None = None
    parallel_tool_calls: bool | None = None
    response_format: JsonObject | None = None
    reasoning_effort: str | None = None
    # Engine-specific fields (vLLM's top_k, min_p, ...), forwarded unchanged.
    extras: JsonObject | None = None
    # A raw prompt continued as written, no chat template (legacy completions);
    # set exactly when messages is empty.
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One embedding request: texts or token ids, already validated by the gateway."""

    request_id: str
    model: str
    inputs: Sequence[str | Sequence[int]]
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order, and the tokens read."""

    vectors: Sequence[Sequence[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Delta:
    """Text of the first choice since the previous event, and how many tokens it holds."""

    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class ToolCallFragment:
    """Part of a tool call: the first carries id and name, later ones argument text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log probability of one token; ``top`` holds (token, logprob, bytes) alternatives."""

    token: str
    logprob: float
    bytes: bytes
    top: Sequence[tuple[str, float, builtins.bytes]] = ()


@dataclass(frozen=True, slots=True)
class ChoiceEvent:
    """Anything a Delta cannot say: another choice's text, reasoning text,
    tool-call fragments, log probabilities."""

    index: int
    token_count: int
    text: str = ""
    reasoning: str = ""
    tool_calls: Sequence[ToolCallFragment] = ()
    logprobs: Sequence[TokenLogprob] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a successful generation."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Every choice's reason, by index, when n > 1 (``reason`` is choice 0's).
    choice_reasons: Sequence[FinishReason] = ()


# What an engine's generate yields.
EngineEvent = Delta | ChoiceEvent | Finished


@dataclass(frozen=True, slots=True)
class LoadReport:
    """How busy an engine is."""

    running: int
    waiting: int
    capacity: int
    kv_cache_usage: float | None = None


# OpenAI's error code for a prompt plus completion over the model's context.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


class EngineError(Exception):
    """Base of the errors an engine raises; the sidecar maps each to a gRPC status."""

    reason = "engine_error"


class EngineUnavailable(EngineError):
    """The engine cannot take the request now (down, loading, overloaded)."""

    reason = "engine_unavailable"


class EngineFailed(EngineError):
    """The engine failed while generating."""

    reason = "engine_failed"


class EngineRejectedRequest(EngineError):
    """The engine refused the request as invalid (for example too long a prompt)."""

    reason = "invalid_request"

    def __init__(self, message: str, field: str = "messages", reason: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        if reason is not None:
            self.reason = reason  # e.g. OpenAI's "context_length_exceeded"


class Engine(Protocol):
    """An inference engine. ``generate`` must stop work promptly when its
    iterator is closed or its task cancelled: that is how aborts reach it."""

    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Stream deltas, then exactly one Finished; or raise EngineError."""
        ...

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Embed every input; raise EngineRejectedRequest if the engine does not embed."""
        ...

    def load(self) -> LoadReport:
        """Report current load without blocking."""
        ...

    def ready(self) -> bool:
        """Whether the engine can serve now (the sidecar's health), without blocking."""
        ...

    async def start(self) -> None:
        """Acquire resources (connections, background tasks)."""
        ...

    async def close(self) -> None:
        """Release resources."""
        ...
