"""Rate-limit state as metadata named like OpenAI's headers (``x-ratelimit-*``).

An admitted call sends it in its initial metadata, a refused one in its
trailing metadata; the REST shim copies both into HTTP headers.
"""

from __future__ import annotations

import math

from gateway.limits.ports import Decision

Metadata = tuple[tuple[str, str], ...]


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: ``250ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


def ratelimit_metadata(decision: Decision | None) -> Metadata:
    """The x-ratelimit-* sextet of a decision (nothing without one)."""
    if decision is None:
        return ()
    r, t = decision.requests, decision.tokens
    return (
        ("x-ratelimit-limit-requests", str(r.limit)),
        ("x-ratelimit-remaining-requests", str(r.remaining)),
        ("x-ratelimit-reset-requests", format_duration(r.reset_s)),
        ("x-ratelimit-limit-tokens", str(t.limit)),
        ("x-ratelimit-remaining-tokens", str(t.remaining)),
        ("x-ratelimit-reset-tokens", format_duration(t.reset_s)),
    )
