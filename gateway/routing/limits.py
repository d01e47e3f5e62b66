"""Output-token limits of a model route."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """How many tokens a model may be asked for, and what to ask when the client is silent."""

    # None: up to the model's limit (the engine's context minus the prompt).
    default_max_tokens: int | None
    max_output_tokens: int
    # What rate limits reserve when the client sets no limit (then reconciled).
    reserve_completion_tokens: int = 256
