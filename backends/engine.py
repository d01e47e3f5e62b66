"""The engine interface a sidecar serves, free of any transport."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class FinishReason(enum.Enum):
    """Why an engine stopped generating."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class EngineMessage:
    """One chat message (role is the OpenAI role name)."""

    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One generation request, already validated by the gateway."""

    request_id: str
    model: str
    messages: Sequence[EngineMessage]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """Text generated since the previous event, and how many tokens it holds."""

    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a successful generation."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    """How busy an engine is."""

    running: int
    waiting: int
    capacity: int
    kv_cache_usage: float | None = None


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

    def __init__(self, message: str, field: str = "messages") -> None:
        super().__init__(message)
        self.field = field


class Engine(Protocol):
    """An inference engine. ``generate`` must stop work promptly when its
    iterator is closed or its task cancelled: that is how aborts reach it."""

    def generate(self, request: EngineRequest) -> AsyncIterator[Delta | Finished]:
        """Stream deltas, then exactly one Finished; or raise EngineError."""
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
