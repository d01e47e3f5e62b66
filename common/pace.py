"""How long streams may hold a message, from how far this process falls behind.

At a real model's pace (a token every 10-30 ms) a stream's tokens arrive
one at a time, so merging "what arrived while the previous write was in
flight" merges nothing, and every token costs every hop a wake-up and a
message. When the process cannot keep up with that, its event loop lags:
timers fire late, and every stream's tokens queue behind each other. Then,
and only then, holding each stream's next message for a few tens of
milliseconds merges its tokens into fewer messages and lets the process
catch up; the first token of a stream is never held (see common.batching).

``LoopLagPace`` measures the lag of a periodic timer while streams are
active (it stops sampling when nobody asked for a while, so an idle
process stays idle) and turns it into a hold with a simple controller:
grow while the smoothed lag is over a threshold, shrink while it is well
under, never above ``max_hold_s``, and zero when keeping up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

# The most a message is held by default: the bound on the delay merging adds.
DEFAULT_MAX_HOLD_S = 0.050


@dataclass(frozen=True, slots=True)
class PaceSettings:
    """The controller's knobs (defaults suit token streams; see ARCHITECTURE.md)."""

    max_hold_s: float = DEFAULT_MAX_HOLD_S  # the most a message is held: the added delay's bound
    min_hold_s: float = 0.010  # shorter holds merge nothing at a real model's token pace
    lag_threshold_s: float = 0.002  # smoothed lag above this: the process is behind
    sample_s: float = 0.010  # how often the loop's lag is sampled while streams run
    idle_after_s: float = 1.0  # stop sampling when no stream asked for this long
    smoothing: float = 0.3  # weight of the newest lag sample in the moving average
    grow: float = 1.5  # hold multiplier per lagging sample
    shrink: float = 0.8  # hold multiplier per sample well under the threshold


class FixedPace:
    """A constant hold (the sidecar's opt-in ``--stream-interval-ms``)."""

    def __init__(self, hold_s: float) -> None:
        self._hold = hold_s

    def hold_s(self) -> float:
        """The configured interval."""
        return self._hold


class LoopLagPace:
    """Hold derived from the running event loop's lag (see the module docstring)."""

    def __init__(
        self,
        settings: PaceSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        floor_s: float = 0.0,
    ) -> None:
        self.settings = settings or PaceSettings()
        self._clock = clock
        self._floor = floor_s  # a fixed minimum hold (the opt-in stream interval)
        self._hold = 0.0
        self._lag = 0.0
        self._last_asked = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def lag_s(self) -> float:
        """The smoothed loop lag the hold is based on."""
        return self._lag

    def hold_s(self) -> float:
        """The hold now; starts sampling if it was idle."""
        self._last_asked = self._clock()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sample())
        return max(self._hold, self._floor)

    def observe(self, lag_s: float) -> float:
        """One controller step for a lag sample; returns the new hold."""
        s = self.settings
        self._lag += s.smoothing * (lag_s - self._lag)
        if self._lag > s.lag_threshold_s:
            self._hold = min(s.max_hold_s, max(s.min_hold_s, self._hold * s.grow))
        elif self._lag < s.lag_threshold_s / 2 and self._hold:
            self._hold *= s.shrink
            if self._hold < s.min_hold_s:
                self._hold = 0.0
        return self._hold

    async def _sample(self) -> None:
        s, clock = self.settings, self._clock
        try:
            while clock() - self._last_asked < s.idle_after_s:
                due = clock() + s.sample_s
                await asyncio.sleep(s.sample_s)
                self.observe(max(0.0, clock() - due))
        finally:
            # Idle (or the loop is closing): start from scratch next time.
            self._task = None
            self._hold = 0.0
            self._lag = 0.0

    async def close(self) -> None:
        """Stop sampling (servers call this on shutdown)."""
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
