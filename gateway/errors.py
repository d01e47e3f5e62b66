"""The gateway's error hierarchy. Each class knows its kind; one transport
function turns a kind into a gRPC status, and the shim has one table from
gRPC status to HTTP status, so there is exactly one mapping per hop."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    """Transport-neutral error categories (named after gRPC's codes they map to)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Violation:
    """One invalid request field, named as the client named it (snake_case, OpenAI's names)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted limit: its subject (``tenant:NAME``) and what was exceeded."""

    subject: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    kind = ErrorKind.INTERNAL
    reason = "internal_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def violations(self) -> Sequence[Violation]:
        """Field violations, for invalid input."""
        return ()

    @property
    def quota_violations(self) -> Sequence[QuotaViolation]:
        """Exhausted quotas, for rate limits."""
        return ()


class InvalidRequest(GatewayError):
    """The request breaks the contract; every broken field is listed."""

    kind = ErrorKind.INVALID_ARGUMENT
    reason = "invalid_request"

    def __init__(self, violations: Sequence[Violation], reason: str | None = None) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{first.field}: {first.description}{more}")
        self._violations = tuple(violations)
        if reason is not None:
            self.reason = reason

    @property
    def violations(self) -> Sequence[Violation]:
        """Every invalid field found."""
        return self._violations


class ModelNotFound(GatewayError):
    """No model or alias of that name is configured."""

    kind = ErrorKind.NOT_FOUND
    reason = "model_not_found"

    def __init__(self, model: str) -> None:
        # The name is echoed as OpenAI does; it is client input, so cap its length.
        shown = model if len(model) <= 128 else model[:128] + "..."
        super().__init__(f"The model '{shown}' does not exist or you do not have access to it.")
        self.model = model


class BackendUnavailable(GatewayError):
    """No backend could serve the request (down, overloaded, refused)."""

    kind = ErrorKind.UNAVAILABLE
    reason = "backend_unavailable"


class BackendFailed(GatewayError):
    """The backend failed while generating; the stream cannot be completed."""

    kind = ErrorKind.INTERNAL
    reason = "backend_failed"


class BackendTimeout(GatewayError):
    """The backend did not answer in time."""

    kind = ErrorKind.DEADLINE_EXCEEDED
    reason = "backend_timeout"


class Unauthenticated(GatewayError):
    """No API key, or one that is unknown or revoked. Never echoes the key."""

    kind = ErrorKind.UNAUTHENTICATED
    reason = "invalid_api_key"


class PermissionDenied(GatewayError):
    """The caller is known but may not do this (a model outside its tenant's list)."""

    kind = ErrorKind.PERMISSION_DENIED
    reason = "permission_denied"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class RateLimited(GatewayError):
    """A tenant's limit is exhausted (requests, tokens, concurrency or monthly quota)."""

    kind = ErrorKind.RESOURCE_EXHAUSTED
    reason = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        quotas: Sequence[QuotaViolation],
        retry_after_s: float | None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self._quotas = tuple(quotas)
        if reason is not None:
            self.reason = reason

    @property
    def quota_violations(self) -> Sequence[QuotaViolation]:
        """Every limit that refused the request."""
        return self._quotas


class LimiterUnavailable(GatewayError):
    """The shared rate-limit store is unreachable and the policy is fail-closed."""

    kind = ErrorKind.UNAVAILABLE
    reason = "rate_limiter_unavailable"


class ClientStalled(GatewayError):
    """The client read nothing of its stream for the stall timeout; the request was stopped.

    Its stream's buffer was full all that time (the gateway stops pulling
    from the backend then), so the backend call is cancelled rather than
    holding a GPU slot for a reader that is gone.
    """

    kind = ErrorKind.DEADLINE_EXCEEDED
    reason = "client_stalled"


class ShuttingDown(GatewayError):
    """The gateway is draining: new requests are refused, and a stream still
    running when the drain grace ends is ended (after what it sent was metered).
    Retrying reaches another replica."""

    kind = ErrorKind.UNAVAILABLE
    reason = "gateway_shutting_down"
