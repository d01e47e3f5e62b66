"""Output-token limits of a model route."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """How many tokens a model may be asked for, and what to ask when the client is silent."""

    default_max_tokens: int
    max_output_tokens: int
