"""Usage events and the counters they add to."""

from __future__ import annotations

import calendar
import enum
import time
from dataclasses import dataclass

# Outcomes of an admitted request.
OK = "ok"
ERROR = "error"
CANCELLED = "cancelled"

# The counters kept per tenant, model and period.
COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled")


class Granularity(enum.Enum):
    """Bucket size of usage counters."""

    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> int:
        """Length of one period."""
        return 3600 if self is Granularity.HOUR else 86400

    def key(self, unix_s: float) -> str:
        """The period's name (UTC): ``YYYYMMDDHH`` or ``YYYYMMDD``."""
        return time.strftime(
            "%Y%m%d%H" if self is Granularity.HOUR else "%Y%m%d", time.gmtime(unix_s)
        )

    def start(self, unix_s: float) -> int:
        """Start (unix seconds) of the period holding ``unix_s``."""
        return int(unix_s) - int(unix_s) % self.seconds

    def periods(self, start_s: float, end_s: float) -> list[tuple[str, int]]:
        """(name, start) of every period overlapping [start_s, end_s]."""
        out = []
        at = self.start(start_s)
        while at <= end_s:
            out.append((self.key(at), at))
            at += self.seconds
        return out

    @staticmethod
    def parse_key(key: str) -> int:
        """Start (unix seconds) of a period name."""
        fmt = "%Y%m%d%H" if len(key) == 10 else "%Y%m%d"
        return calendar.timegm(time.strptime(key, fmt))


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One finished request, as metered (and appended to the usage stream)."""

    request_id: str
    tenant: str
    key_id: str
    model: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    status: str  # OK, ERROR or CANCELLED
    started_at: float  # unix seconds
    duration_ms: int
    ttft_ms: int | None = None
    exact: bool = True  # token counts from the backend; False: estimated (failed or cancelled)

    def counters(self) -> dict[str, int]:
        """What this event adds to its tenant/model/period counters."""
        return {
            "requests": 1,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "errors": int(self.status == ERROR),
            "cancelled": int(self.status == CANCELLED),
        }


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Counters of one tenant, model and period."""

    tenant: str
    model: str
    granularity: Granularity
    period_start: int
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cancelled: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens
