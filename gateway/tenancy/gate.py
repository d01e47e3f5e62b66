"""Admission of a tenant's request: authenticate, authorise the model, reserve,
and at the end reconcile and meter. Transport-neutral: the gRPC interceptor
(``gateway.transport.tenancy``) drives it.

Reserve before dispatch: one request plus (estimated prompt tokens +
max_tokens, or a configured default when the client gives none) from the
token bucket, and a concurrency lease. Reconcile when the call ends, however
it ends: with the backend's exact usage when the stream finished, otherwise
with an estimate (prompt estimate plus the text streamed so far).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway.errors import (
    ModelNotFound,
    PermissionDenied,
    QuotaViolation,
    RateLimited,
    Unauthenticated,
)
from gateway.limits.limiter import Limiter, Reservation
from gateway.limits.ports import CONCURRENCY, MONTHLY, REQUESTS, TOKENS, TOO_LARGE, Decision
from gateway.metering.meter import Meter
from gateway.metering.model import CANCELLED, ERROR, OK, UsageEvent
from gateway.routing.registry import ModelRegistry
from gateway.tenancy.directory import Principal, Tenant, TenantDirectory
from gateway.tenancy.keys import bearer_token

log = logging.getLogger("llmgw.gateway.tenancy")

# Rough prompt estimate for the reservation only (reconciled with the real count):
# ~4 characters a token, plus the chat template's few tokens per message.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4

# (tenant name, priority rank) of the request being served, for the routing layer.
_CALLER: ContextVar[tuple[str, int]] = ContextVar("llmgw_caller", default=("", 0))

# Outcome of a call the domain refused before dispatch (invalid, unknown model):
# nothing was served, the reservation is returned whole and nothing is metered.
REJECTED = "rejected"


def caller() -> tuple[str, int]:
    """The current request's (tenant, priority rank); ("", 0) without tenancy."""
    return _CALLER.get()


# Models the current caller may use (None: all): fallbacks honour it too.
_ALLOWED: ContextVar[frozenset[str] | None] = ContextVar("llmgw_allowed", default=None)


def allowed_models() -> frozenset[str] | None:
    """Canonical model names the current caller may use; None when unrestricted."""
    return _ALLOWED.get()


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters of text, rounded up."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def estimate_prompt_tokens(message_chars: Sequence[int]) -> int:
    """Prompt tokens of messages of these lengths (an over-estimate on purpose)."""
    return sum(estimate_tokens(c) + TOKENS_PER_MESSAGE for c in message_chars) + 3


_LIMIT_NAMES = {
    REQUESTS: "requests per min (RPM)",
    TOKENS: "tokens per min (TPM)",
    CONCURRENCY: "concurrent requests",
    MONTHLY: "monthly tokens",
    TOO_LARGE: "tokens per min (TPM)",
}


class TenantRateLimited(RateLimited):
    """RateLimited carrying the decision, so transports can send the bucket headers."""

    def __init__(self, tenant: Tenant, decision: Decision, requested: int) -> None:
        limits = tenant.limits
        first = decision.violations[0]
        reason: str | None = None
        if TOO_LARGE in decision.violations:
            first, reason = TOO_LARGE, "request_too_large"
            message = (
                f"Request too large for {_LIMIT_NAMES[TOO_LARGE]} of tenant {tenant.name}: "
                f"limit {limits.tokens.capacity:.0f}, requested {requested}. "
                "Lower max_tokens or the prompt."
            )
        elif MONTHLY in decision.violations:
            first, reason = MONTHLY, "insufficient_quota"
            message = (
                f"Tenant {tenant.name} has used its monthly token quota "
                f"({limits.monthly_tokens}): used {decision.month_used}, requested {requested}."
            )
        else:
            if first == REQUESTS:
                detail = (
                    f"limit {limits.requests_per_minute}, remaining {decision.requests.remaining}"
                )
            elif first == TOKENS:
                detail = (
                    f"limit {limits.tokens_per_minute}, remaining {decision.tokens.remaining}, "
                    f"requested {requested}"
                )
            else:
                detail = f"limit {limits.max_concurrent}, in flight {decision.in_flight}"
            wait = decision.retry_after_s or 0.0
            message = (
                f"Rate limit reached for {_LIMIT_NAMES[first]} of tenant {tenant.name}: "
                f"{detail}. Please try again in {wait:.3g}s."
            )
        quotas = [
            QuotaViolation(f"tenant:{tenant.name}", f"{v}: {_LIMIT_NAMES[v]}")
            for v in decision.violations
        ]
        super().__init__(message, quotas, decision.retry_after_s, reason)
        self.decision = decision
        self.tenant_name = tenant.name
        self.limit = str(first)  # the first exhausted limit, for metrics


@dataclass(slots=True)
class Ticket:
    """One admitted call, from reservation to reconciliation."""

    principal: Principal
    tenant: Tenant
    model: str
    reservation: Reservation
    prompt_estimate: int
    started_at: float
    started_mono: float
    request_id: str = ""
    backend: str = ""
    first_mono: float | None = None
    streamed_chars: int = 0
    usage: tuple[int, int] | None = None  # exact (prompt, completion) from the backend
    done: bool = field(default=False)

    @property
    def decision(self) -> Decision:
        """The admission decision (bucket state for the headers)."""
        return self.reservation.decision


class TenantGate:
    """Authentication, model permissions, rate limits and metering for one process."""

    def __init__(
        self,
        directory: TenantDirectory,
        limiter: Limiter,
        meter: Meter,
        registry: ModelRegistry,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.limiter = limiter
        self.meter = meter
        self._registry = registry
        self._clock = clock
        self._monotonic = monotonic
        self._tasks: set[asyncio.Task[None]] = set()

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of an ``Authorization`` value; Unauthenticated if none matches."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        principal = self.directory.authenticate(token)
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.")
        return principal

    def enter(self, principal: Principal) -> None:
        """Make the caller's tenant and priority visible to the domain for this task."""
        tenant = principal.tenant
        if tenant is not None:
            _CALLER.set((tenant.name, tenant.priority.rank))
            _ALLOWED.set(tenant.models)

    def visible_models(self, principal: Principal) -> Callable[[str], bool]:
        """A filter of the canonical model names the principal may list."""
        tenant = principal.tenant
        if tenant is None:
            return lambda name: True
        return tenant.may_use

    async def admit(
        self,
        principal: Principal,
        model: str,
        message_chars: Sequence[int],
        max_tokens: int | None,
    ) -> Ticket | None:
        """Authorise and reserve. None when the model is unknown (the domain answers 404).

        Raises PermissionDenied, TenantRateLimited or LimiterUnavailable.
        """
        tenant = principal.tenant
        if tenant is None:
            raise PermissionDenied(
                "Admin keys read usage; they cannot call models.", "admin_key_not_allowed"
            )
        try:
            route = self._registry.resolve(model)
        except ModelNotFound:
            return None
        if not tenant.may_use(route.name):
            raise PermissionDenied(
                f"Tenant {tenant.name} is not allowed to use the model '{route.name}'.",
                "model_not_allowed",
            )
        completion = max_tokens
        if completion is None:
            completion = tenant.reserve_completion_tokens or route.limits.default_max_tokens
        completion = max(1, min(completion, route.limits.max_output_tokens))
        prompt = estimate_prompt_tokens(message_chars)
        reservation_id = "rsv-" + secrets.token_hex(10)
        reservation = await self.limiter.acquire(
            tenant.name, tenant.limits, reservation_id, prompt + completion
        )
        if not reservation.decision.admitted:
            raise TenantRateLimited(tenant, reservation.decision, prompt + completion)
        return Ticket(
            principal=principal,
            tenant=tenant,
            model=route.name,
            reservation=reservation,
            prompt_estimate=prompt,
            started_at=self._clock(),
            started_mono=self._monotonic(),
        )

    def finish(self, ticket: Ticket, outcome: str) -> None:
        """Reconcile and meter in the background (never blocks the caller, never raises).

        ``outcome`` is OK, ERROR, CANCELLED or REJECTED.
        """
        if ticket.done:
            return
        ticket.done = True
        task = asyncio.get_running_loop().create_task(self._finish(ticket, outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, ticket: Ticket, outcome: str) -> None:
        try:
            if outcome == REJECTED:
                await self.limiter.release(ticket.reservation, 0)
                return
            exact = ticket.usage is not None and outcome == OK
            if ticket.usage is not None:
                prompt, completion = ticket.usage
            else:
                prompt = ticket.prompt_estimate
                completion = estimate_tokens(ticket.streamed_chars)
            await self.limiter.release(ticket.reservation, prompt + completion)
            now = self._monotonic()
            self.meter.submit(
                UsageEvent(
                    request_id=ticket.request_id or ticket.reservation.id,
                    tenant=ticket.tenant.name,
                    key_id=ticket.principal.key_id,
                    model=ticket.model,
                    backend=ticket.backend,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    status=outcome if outcome in (OK, ERROR, CANCELLED) else ERROR,
                    started_at=ticket.started_at,
                    duration_ms=int((now - ticket.started_mono) * 1000),
                    ttft_ms=None
                    if ticket.first_mono is None
                    else int((ticket.first_mono - ticket.started_mono) * 1000),
                    exact=exact,
                )
            )
        except Exception:  # reconciliation must never take a request down with it
            log.exception("reconciling a request failed")

    async def drain(self) -> None:
        """Wait for reconciliations in progress (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
