"""Timeouts and retry settings the chat service applies to every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.routing.retry_budget import RetryPolicy


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    """How long to wait for a backend, and how to retry before the first token."""

    ttft_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    queue_timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
