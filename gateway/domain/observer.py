"""What the chat service reports as requests go through it (metrics, logs).

A Protocol so the domain names events without knowing Prometheus; the
transport layer provides the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one finished request did (one access-log line, one metrics update)."""

    request_id: str
    model: str
    served_by: str
    backend: str
    tenant: str
    outcome: str
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    # The caller's x-request-id (the REST shim always sends one); "" when none.
    client_request_id: str = ""


class CompletionObserver(Protocol):
    """Receives one call per event; implementations must be cheap and never raise."""

    def started(self, model: str) -> None:
        """A request was admitted for ``model``."""

    def retried(self, model: str) -> None:
        """A failed attempt before the first token is being retried."""

    def fell_back(self, from_model: str, to_model: str) -> None:
        """``from_model`` could not serve; ``to_model`` is tried next."""

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        """The first token arrived; ``overhead_s`` is the part spent outside the backend."""

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        """A delta of ``tokens`` tokens arrived ``gap_s`` after the previous one."""

    def finished(self, record: RequestRecord) -> None:
        """The request ended (outcome: ``ok``, ``cancelled`` or an error reason)."""


class NullObserver:
    """Observes nothing (tests, and the default)."""

    def started(self, model: str) -> None:
        """Ignore."""

    def retried(self, model: str) -> None:
        """Ignore."""

    def fell_back(self, from_model: str, to_model: str) -> None:
        """Ignore."""

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        """Ignore."""

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        """Ignore."""

    def finished(self, record: RequestRecord) -> None:
        """Ignore."""
