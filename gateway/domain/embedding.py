"""Embedding requests as the domain sees them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# One input: a text, or token ids of the model's own tokenizer.
EmbeddingInput = str | Sequence[int]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """An embedding request as received, before validation."""

    model: str
    inputs: Sequence[EmbeddingInput]
    dimensions: int | None = None
    user: str = ""


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """A validated embedding request bound to a model: what a backend is asked to do."""

    request_id: str
    model: str
    inputs: Sequence[EmbeddingInput]
    dimensions: int | None = None

    def prompt_chars(self) -> int:
        """Size of the inputs in characters (a token id counts as four), for estimates."""
        return sum(len(i) if isinstance(i, str) else 4 * len(i) for i in self.inputs)
