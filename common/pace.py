"""How long streams may hold a message, from how far this process falls behind.

At a real model's pace (a token every 10-30 ms) a stream's tokens arrive
one at a time, so merging "what arrived while the previous write was in
flight" merges nothing, and every token costs every hop a wake-up and a
message. When the process cannot keep up with that, its event loop falls
behind: a task that was woken waits in the ready queue while others run.
Then, and only then, holding each stream's next message for a few tens of
milliseconds merges its tokens into fewer messages and lets the process
catch up; the first token of a stream is never held (see common.batching).

``LoopLagPace`` needs no timer of its own: every stream reports how long
its consumer waited between being woken and running (``woke``), which is
exactly the ready queue's delay, at no cost beyond two clock reads. Once
per ``sample_s`` the mean of those delays steps a simple controller: grow
the hold while it is over a threshold, shrink it while it is well under,
never above ``max_hold_s``, and zero when keeping up. An idle process
reports nothing and does nothing; a hold left from a busy spell is
dropped after ``idle_after_s`` without reports.

The hold grows fast and shrinks slowly, because the hold is what removes
the lag: a process that needs a 50 ms hold to keep up shows no lag while
it holds, and a controller that shrank as fast as it grew would drop the
hold within a few windows, fall behind again and oscillate, spending much
of a busy spell sending one message per token. Shrinking by ~3 % a window
keeps the hold for about half a second after the lag is gone, so it
settles just above what the load needs; an idle process still drops it
(``idle_after_s``).
"""

from __future__ import annotations

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
    lag_threshold_s: float = 0.002  # mean wake-up delay above this: the process is behind
    sample_s: float = 0.010  # the controller steps at most this often
    idle_after_s: float = 1.0  # a hold with no reports for this long is dropped
    smoothing: float = 0.3  # weight of the newest window in the moving average
    grow: float = 1.5  # hold multiplier per lagging window
    shrink: float = 0.97  # hold multiplier per window well under the threshold (slow: see above)


class FixedPace:
    """A constant hold (the sidecar's opt-in ``--stream-interval-ms``)."""

    def __init__(self, hold_s: float) -> None:
        self._hold = hold_s

    def hold_s(self) -> float:
        """The configured interval."""
        return self._hold

    def woke(self, delay_s: float, now: float) -> None:
        """Ignored: the interval does not depend on load."""


class LoopLagPace:
    """Hold derived from how late woken streams run (see the module docstring)."""

    def __init__(
        self,
        settings: PaceSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        floor_s: float = 0.0,
        on_step: Callable[[float, float], None] | None = None,
    ) -> None:
        self.settings = settings or PaceSettings()
        # Told (hold, lag) after every controller step: the process's gauges.
        self._on_step = on_step
        self._clock = clock
        self._floor = floor_s  # a fixed minimum hold (the opt-in stream interval)
        self._hold = 0.0
        self._lag = 0.0
        self._window_start = 0.0
        self._window_sum = 0.0
        self._window_count = 0
        self._last_step = 0.0

    @property
    def lag_s(self) -> float:
        """The smoothed wake-up delay the hold is based on."""
        return self._lag

    def hold_s(self) -> float:
        """The hold now."""
        if self._hold and self._clock() - self._last_step > self.settings.idle_after_s:
            self._hold = self._lag = 0.0  # left over from a busy spell long gone
            if self._on_step is not None:
                self._on_step(0.0, 0.0)
        return max(self._hold, self._floor)

    def woke(self, delay_s: float, now: float) -> None:
        """A stream ran ``delay_s`` after it was woken (``now``: the clock's reading)."""
        self._window_sum += delay_s
        self._window_count += 1
        if now - self._window_start >= self.settings.sample_s:
            self.observe(self._window_sum / self._window_count)
            self._window_start = now
            self._window_sum = 0.0
            self._window_count = 0

    def observe(self, lag_s: float) -> float:
        """One controller step for a window's mean delay; returns the new hold."""
        s = self.settings
        self._last_step = self._clock()
        self._lag += s.smoothing * (lag_s - self._lag)
        if self._lag > s.lag_threshold_s:
            self._hold = min(s.max_hold_s, max(s.min_hold_s, self._hold * s.grow))
        elif self._lag < s.lag_threshold_s / 2 and self._hold:
            self._hold *= s.shrink
            if self._hold < s.min_hold_s:
                self._hold = 0.0
        if self._on_step is not None:
            self._on_step(self._hold, self._lag)
        return self._hold

    async def close(self) -> None:
        """Nothing to stop (kept so servers can close every part alike)."""
