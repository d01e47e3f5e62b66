"""What admission grants a request, and what the request used when it ended.

The chat service asks its admission port for a ``Grant`` before routing
(who is calling, at what priority, which models, what was reserved) and
hands back a ``Spent`` when the request ends, however it ends, so limits
are reconciled and usage metered by the one component that saw the whole
request. Token estimates live here because both sides need them: the
reservation before anything ran, and the account of a request that ended
without the backend's exact usage.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.domain.chat import ChatRequest, FanOut
from gateway.domain.embedding import EmbeddingRequest
from gateway.domain.fanout import one_per_prompt
from gateway.limits.limiter import Reservation
from gateway.limits.ports import Decision

# Rough prompt estimate (reconciled with the real count when the backend reports it):
# ~4 characters a token, plus the chat template's few tokens per message.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters of text, rounded up."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def estimate_prompt_tokens(message_chars: Iterable[int]) -> int:
    """Prompt tokens of messages of these lengths (an over-estimate on purpose)."""
    return sum(estimate_tokens(c) + TOKENS_PER_MESSAGE for c in message_chars) + 3


def estimate_request_prompt(request: ChatRequest | EmbeddingRequest | FanOut) -> int:
    """Prompt tokens of a request: its messages, its raw prompt, its embedding
    inputs (a token id is a token), or each prompt of a fan-out once."""
    if isinstance(request, FanOut):
        return sum(estimate_request_prompt(r) for r in request.prompts)
    if isinstance(request, EmbeddingRequest):
        return sum(
            estimate_tokens(len(i)) if isinstance(i, str) else len(i) for i in request.inputs
        )
    if request.prompt is not None:
        return estimate_tokens(len(request.prompt)) + 1
    return estimate_prompt_tokens(len(m.content) for m in request.messages)


class Status(enum.Enum):
    """How an admitted request ended, for accounting."""

    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    # Refused by the domain or the engine as invalid before anything was served:
    # the reservation is returned whole and nothing is metered.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted request's allowance: who is calling, its priority class, the
    models it may use (fallbacks included) and the capacity reserved for it."""

    tenant: str
    key_id: str
    priority: int
    allowed: frozenset[str] | None  # canonical model names; None: every model
    reservation: Reservation
    prompt_estimate: int

    @property
    def decision(self) -> Decision:
        """The admission decision (bucket state, for the rate-limit headers)."""
        return self.reservation.decision


@dataclass(frozen=True, slots=True)
class Spent:
    """What an admitted request used. Token counts are the backend's when the
    stream finished (``exact``), otherwise what was sent to the client."""

    request_id: str
    status: Status
    model: str  # the model that served it (a fallback, maybe); the requested one if none did
    backend: str
    prompt_tokens: int
    completion_tokens: int
    exact: bool
    started_at: float  # unix seconds
    duration_s: float
    ttft_s: float | None


def spent_by_choices(
    request_id: str,
    model: str,
    choices: Sequence[Spent | None],
    n: int,
    started_at: float,
    duration_s: float,
) -> Spent:
    """What a fanned-out request used, as one request: every choice's completion
    tokens and each prompt's tokens once, as OpenAI counts them (choice ``i``
    continues prompt ``i // n``); exact only when every choice finished.

    ``choices`` holds None for a choice that never started. The request failed
    when a choice failed (or was refused as invalid after another was served),
    was cancelled when a choice was, and is rejected (returned whole, not
    metered) when a choice was refused as invalid and none was served. It was
    served by the first choice that reached a backend (``model`` when none did).
    """
    ran = [c for c in choices if c is not None]
    served = [c for c in ran if c.backend]
    statuses = {c.status for c in ran}
    if Status.ERROR in statuses or (Status.REJECTED in statuses and served):
        status = Status.ERROR
    elif Status.REJECTED in statuses:
        status = Status.REJECTED
    elif Status.CANCELLED in statuses or len(ran) < len(choices):
        status = Status.CANCELLED
    else:
        status = Status.OK
    # The backend's count where a choice of the prompt finished.
    prompts = one_per_prompt(choices, n, preferred=lambda c: c.exact)
    lead = served[0] if served else None
    return Spent(
        request_id=request_id,
        status=status,
        model=lead.model if lead else model,
        backend=lead.backend if lead else "",
        prompt_tokens=sum(c.prompt_tokens for c in prompts),
        completion_tokens=sum(c.completion_tokens for c in ran),
        exact=len(ran) == len(choices) and all(c.exact for c in ran),
        started_at=started_at,
        duration_s=duration_s,
        ttft_s=min((c.ttft_s for c in ran if c.ttft_s is not None), default=None),
    )
