"""Admission of a tenant's request and its accounting: authorise the model,
reserve, and at the end reconcile and meter. Implements the chat service's
``AdmissionPort``; transport-neutral (the service calls it, not a gRPC
interceptor).

Reserve before dispatch: one request plus (estimated prompt tokens +
max_tokens, or a configured default when the client gives none) from the
token bucket, and a concurrency lease. A request with several choices (chat's
``n``, a completions fan-out) is still one request and one lease; its tokens
cover every choice. Reconcile when the request ends,
however it ends, with what the service reports it used: the backend's exact
usage when the stream finished, otherwise what was sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from gateway.domain.accounting import Grant, Spent, Status, estimate_request_prompt
from gateway.domain.chat import ChatRequest, FanOut
from gateway.domain.embedding import EmbeddingRequest
from gateway.errors import PermissionDenied, QuotaViolation, RateLimited
from gateway.limits.limiter import Limiter
from gateway.limits.ports import CONCURRENCY, MONTHLY, REQUESTS, TOKENS, TOO_LARGE, Decision
from gateway.metering.meter import Meter
from gateway.metering.model import CANCELLED, ERROR, OK, UsageEvent
from gateway.routing.registry import ModelRoute
from gateway.tenancy.directory import Principal, Tenant

log = logging.getLogger("llmgw.gateway.tenancy")

_LIMIT_NAMES = {
    REQUESTS: "requests per min (RPM)",
    TOKENS: "tokens per min (TPM)",
    CONCURRENCY: "concurrent requests",
    MONTHLY: "monthly tokens",
    TOO_LARGE: "tokens per min (TPM)",
}
_METERED = {Status.OK: OK, Status.ERROR: ERROR, Status.CANCELLED: CANCELLED}


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
                "Lower max_tokens, n or the prompt."
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


# Called with (tenant, limit) for every refusal by a limit (a Prometheus counter in production).
RefusalHook = Callable[[str, str], None]


class TenantAdmission:
    """Model permissions, rate limits and metering of one process's tenants."""

    def __init__(
        self,
        limiter: Limiter,
        meter: Meter,
        on_refused: RefusalHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.meter = meter
        self._on_refused = on_refused
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def may_list(self, caller: Principal | None) -> Callable[[str], bool]:
        """Tenants see the models they may use; admins (and no caller) see all."""
        tenant = caller.tenant if caller is not None else None
        if tenant is None:
            return lambda name: True
        return tenant.may_use

    async def admit(
        self,
        caller: Principal | None,
        route: ModelRoute,
        request: ChatRequest | EmbeddingRequest | FanOut,
    ) -> Grant:
        """Authorise and reserve; raise PermissionDenied, TenantRateLimited or
        LimiterUnavailable."""
        tenant = caller.tenant if caller is not None else None
        if caller is None or tenant is None:
            raise PermissionDenied(
                "Admin keys read usage; they cannot call models.", "admin_key_not_allowed"
            )
        if not tenant.may_use(route.name):
            raise PermissionDenied(
                f"Tenant {tenant.name} is not allowed to use the model '{route.name}'.",
                "model_not_allowed",
            )
        prompt = estimate_request_prompt(request)
        if isinstance(request, EmbeddingRequest):
            completion = 0
        elif isinstance(request, FanOut):
            completion = sum(_completion(r, tenant, route) for r in request.requests)
        else:
            completion = _completion(request, tenant, route)
        reservation = await self.limiter.acquire(
            tenant.name, tenant.limits, "rsv-" + secrets.token_hex(10), prompt + completion
        )
        if not reservation.decision.admitted:
            error = TenantRateLimited(tenant, reservation.decision, prompt + completion)
            if self._on_refused is not None:
                self._on_refused(tenant.name, error.limit)
            raise error
        return Grant(
            tenant=tenant.name,
            key_id=caller.key_id,
            priority=tenant.priority.rank,
            allowed=tenant.models,
            reservation=reservation,
            prompt_estimate=prompt,
        )

    def settle(self, grant: Grant, spent: Spent) -> None:
        """Reconcile and meter in the background (never blocks the caller, never raises)."""
        task = asyncio.get_running_loop().create_task(self._settle(grant, spent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, grant: Grant, spent: Spent) -> None:
        try:
            if spent.status is Status.REJECTED:
                await self.limiter.release(grant.reservation, 0)
                return
            await self.limiter.release(
                grant.reservation, spent.prompt_tokens + spent.completion_tokens
            )
            self.meter.submit(
                UsageEvent(
                    request_id=spent.request_id or grant.reservation.id,
                    tenant=grant.tenant,
                    key_id=grant.key_id,
                    model=spent.model,
                    backend=spent.backend,
                    prompt_tokens=spent.prompt_tokens,
                    completion_tokens=spent.completion_tokens,
                    status=_METERED[spent.status],
                    started_at=spent.started_at,
                    duration_ms=int(spent.duration_s * 1000),
                    ttft_ms=None if spent.ttft_s is None else int(spent.ttft_s * 1000),
                    exact=spent.exact,
                )
            )
        except Exception:  # reconciliation must never take a request down with it
            log.exception("reconciling a request failed")

    @property
    def settling(self) -> int:
        """Reconciliations in progress."""
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for reconciliations in progress (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _completion(request: ChatRequest, tenant: Tenant, route: ModelRoute) -> int:
    """Completion tokens to reserve: the request's limit, else the tenant's or model's
    default, for each of its ``n`` choices (one generation answers them all)."""
    completion = request.max_completion_tokens
    if completion is None:
        completion = request.max_tokens
    if completion is None:
        # No limit asked: an estimate (reconciled with the real count at the end).
        completion = (
            tenant.reserve_completion_tokens
            or route.limits.default_max_tokens
            or route.limits.reserve_completion_tokens
        )
    return max(1, min(completion, route.limits.max_output_tokens)) * request.features.n
