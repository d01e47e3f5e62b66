"""What the chat service reports as requests go through it (metrics, logs).

A Protocol so the domain names events without knowing Prometheus; the
transport layer provides the implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.domain.fanout import one_per_prompt
from gateway.errors import ClientStalled


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


class FanOutObserver:
    """Reports the choices of one fanned-out request (a completions call with
    several prompts or ``n``) as the one request it is: one ``started``, the
    first choice's ``first_token``, one ``finished`` with every choice's output
    and each prompt's tokens once (as the grant is settled), so that request
    counters, the in-flight gauge, the TTFT histogram and the access log count
    client requests, not generations. Retries, fallbacks and deltas are each
    choice's own and pass through.

    ``for_choice(i)`` is the observer of choice ``i``; ``close`` reports the
    request once every choice has ended (a choice that never started reports
    nothing and counts as cancelled)."""

    def __init__(self, observer: CompletionObserver, choices: int, n: int) -> None:
        self._observer = observer
        self._records: list[RequestRecord | None] = [None] * choices
        self._n = n
        self._started = False
        self._first_token = False

    def for_choice(self, index: int) -> CompletionObserver:
        """The observer to hand choice ``index``'s stream."""
        return _ChoiceObserver(self, index)

    def close(self, request_id: str, duration_s: float) -> None:
        """Report the request (when a choice started) under ``request_id``, the
        id its client saw."""
        if not self._started:
            return
        self._observer.finished(merge_records(request_id, self._records, self._n, duration_s))


class _ChoiceObserver:
    """One choice's events, as its FanOutObserver reports them."""

    def __init__(self, fanout: FanOutObserver, index: int) -> None:
        self._fanout = fanout
        self._index = index

    def started(self, model: str) -> None:
        fanout = self._fanout
        if not fanout._started:
            fanout._started = True
            fanout._observer.started(model)

    def retried(self, model: str) -> None:
        self._fanout._observer.retried(model)

    def fell_back(self, from_model: str, to_model: str) -> None:
        self._fanout._observer.fell_back(from_model, to_model)

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        fanout = self._fanout
        if not fanout._first_token:
            fanout._first_token = True
            fanout._observer.first_token(model, ttft_s, overhead_s)

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        self._fanout._observer.delta(model, gap_s, tokens)

    def finished(self, record: RequestRecord) -> None:
        self._fanout._records[self._index] = record


# Outcomes that are the client's doing, from the mildest: any other outcome is a
# failure, and a fan-out with a failed choice failed.
_CLIENT_ENDED = ("ok", "cancelled", ClientStalled.reason)


def merge_records(
    request_id: str, records: Sequence[RequestRecord | None], n: int, duration_s: float
) -> RequestRecord:
    """One record for the choices of a fan-out (choice ``i`` continues prompt
    ``i // n``; None: never started): the first failure's outcome, else the
    client's doing (a stall, else a cancel, a choice that never started counting
    as cancelled), else ``ok``; every choice's completion tokens, each prompt's
    prompt tokens once; the earliest first token; served by the first choice
    that reached a backend. At least one record must be present."""
    ran = [r for r in records if r is not None]
    outcomes = [r.outcome for r in ran] + ["cancelled"] * (len(records) - len(ran))
    failures = [o for o in outcomes if o not in _CLIENT_ENDED]
    outcome = failures[0] if failures else max(outcomes, key=_CLIENT_ENDED.index)
    lead = next((r for r in ran if r.backend), ran[0])
    # The backend's count where a choice of the prompt finished.
    prompts = one_per_prompt(records, n, preferred=lambda r: r.outcome == "ok")
    return RequestRecord(
        request_id=request_id,
        model=ran[0].model,
        served_by=lead.served_by,
        backend=lead.backend,
        tenant=ran[0].tenant,
        outcome=outcome,
        ttft_s=min((r.ttft_s for r in ran if r.ttft_s is not None), default=None),
        prompt_tokens=sum(r.prompt_tokens for r in prompts),
        completion_tokens=sum(r.completion_tokens for r in ran),
        duration_s=duration_s,
        client_request_id=ran[0].client_request_id,
    )
