from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from itertools import pairwise

import pytest

from common.batching import StreamLimits, StreamStalled, batched
from common.pace import LoopLagPace, PaceSettings


async def numbers(n: int, pause_every: int = 0) -> AsyncIterator[int]:
    for i in range(n):
        if pause_every and i % pause_every == 0:
            await asyncio.sleep(0.001)
        yield i


async def test_a_fast_consumer_gets_items_one_by_one() -> None:
    async def slow_source() -> AsyncIterator[int]:
        for i in range(5):
            await asyncio.sleep(0.002)
            yield i

    assert [b async for b in batched(slow_source())] == [[0], [1], [2], [3], [4]]


async def test_a_slow_consumer_gets_merged_batches_in_order() -> None:
    seen: list[list[int]] = []
    async for batch in batched(numbers(100, pause_every=10)):
        seen.append(batch)
        await asyncio.sleep(0.005)  # a slow socket
    assert [i for b in seen for i in b] == list(range(100))
    assert len(seen) < 30


async def test_errors_come_after_the_items_before_them() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("boom")

    got: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        async for batch in batched(failing()):
            got.extend(batch)
    assert got == [1, 2]


async def test_closing_the_batches_closes_the_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                await asyncio.sleep(0.001)
                yield i
                i += 1
        finally:
            closed.set()

    async with aclosing(batched(endless())) as batches:
        await anext(batches)
    assert closed.is_set()


async def test_cancelling_the_consumer_closes_the_source() -> None:
    closed = asyncio.Event()

    async def hanging() -> AsyncIterator[int]:
        try:
            await asyncio.Event().wait()
            yield 0
        finally:
            closed.set()

    async def consume() -> None:
        async for _ in batched(hanging()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


# --- Bounds, holds and order, with controlled producers and a fake timer ----------------

_END = object()


class Feed:
    """A source the test pushes items into; ``_END`` ends it. Counts what was pulled."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.pulled = 0
        self.closed = asyncio.Event()

    async def items(self) -> AsyncIterator[str]:
        try:
            while (item := await self.queue.get()) is not _END:
                self.pulled += 1
                assert isinstance(item, str)
                yield item
        finally:
            self.closed.set()

    def push(self, *items: object) -> None:
        for item in items:
            self.queue.put_nowait(item)


class FakeTimer:
    """Records the holds asked for; fires them only when the test says so."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.pending: list[tuple[float, Callable[[], None], list[bool]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimer.Handle:
        self.delays.append(delay)
        cancelled = [False]
        self.pending.append((delay, callback, cancelled))
        return FakeTimer.Handle(cancelled)

    class Handle:
        def __init__(self, cancelled: list[bool]) -> None:
            self._cancelled = cancelled

        def cancel(self) -> None:
            self._cancelled[0] = True

    def fire(self) -> None:
        """Run every pending, uncancelled callback (the hold elapsed)."""
        pending, self.pending = self.pending, []
        for _, callback, cancelled in pending:
            if not cancelled[0]:
                callback()


class Hold:
    """A pace with a hold the test sets."""

    def __init__(self, hold_s: float) -> None:
        self.hold = hold_s
        self.asked = 0
        self.delays: list[float] = []

    def hold_s(self) -> float:
        self.asked += 1
        return self.hold

    def woke(self, delay_s: float, now: float) -> None:
        self.delays.append(delay_s)


async def settle() -> None:
    """Let every ready task run (no time passes: nothing here waits on a clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_first_token_goes_at_once_even_while_holding() -> None:
    feed, timer = Feed(), FakeTimer()
    batches = batched(feed.items(), pace=Hold(0.05), timer=timer)
    async with aclosing(batches):
        next_batch = asyncio.ensure_future(anext(batches))
        feed.push("a")
        assert await next_batch == ["a"]
        assert timer.delays == []  # not held


async def test_later_tokens_are_held_for_the_pace_then_merged_in_order() -> None:
    feed, timer = Feed(), FakeTimer()
    batches = batched(feed.items(), pace=Hold(0.05), timer=timer)
    async with aclosing(batches):
        feed.push("a")
        assert await anext(batches) == ["a"]
        next_batch = asyncio.ensure_future(anext(batches))
        feed.push("b", "c")
        await settle()
        assert not next_batch.done()  # held: the timer has not fired
        assert timer.delays == [0.05]  # the hold asked for is the pace's, no longer
        timer.fire()
        assert await next_batch == ["b", "c"]


async def test_a_zero_hold_adds_nothing() -> None:
    feed, timer = Feed(), FakeTimer()
    pace = Hold(0.0)
    batches = batched(feed.items(), pace=pace, timer=timer)
    async with aclosing(batches):
        for item in "abc":
            feed.push(item)
            assert await anext(batches) == [item]
    assert pace.asked >= 2 and timer.delays == []  # asked, and never scheduled a hold


async def test_a_hold_ends_early_when_the_stream_ends() -> None:
    feed, timer = Feed(), FakeTimer()
    batches = batched(feed.items(), pace=Hold(0.05), timer=timer)
    async with aclosing(batches):
        feed.push("a")
        assert await anext(batches) == ["a"]
        feed.push("b", _END)
        assert await anext(batches) == ["b"]  # without the timer firing
        assert await anext(batches, None) is None


async def test_a_hold_ends_early_when_a_full_batch_waits() -> None:
    feed, timer = Feed(), FakeTimer()
    limits = StreamLimits(max_buffered=100, max_batch=3, stall_timeout_s=None)
    batches = batched(feed.items(), limits, pace=Hold(0.05), timer=timer)
    async with aclosing(batches):
        feed.push("a")
        assert await anext(batches) == ["a"]
        feed.push("b", "c", "d", "e")
        assert await anext(batches) == ["b", "c", "d"]  # capped at max_batch, not held longer


async def test_batches_never_exceed_the_cap_and_lose_or_reorder_nothing() -> None:
    rng = random.Random(1234)
    holds = 0
    for _ in range(30):
        feed, timer = Feed(), FakeTimer()
        cap = rng.randint(1, 40)
        limits = StreamLimits(max_buffered=rng.randint(1, 60), max_batch=cap, stall_timeout_s=None)
        words = [
            "".join(rng.choice("xyz") for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(1, 80))
        ]
        got: list[str] = []

        async def produce(words: list[str] = words, feed: Feed = feed) -> None:
            for word in words:
                feed.push(word)
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
            feed.push(_END)

        async def tick(timer: FakeTimer = timer) -> None:
            while True:  # holds elapse at random moments
                await asyncio.sleep(0)
                if rng.random() < 0.3:
                    timer.fire()

        producer = asyncio.create_task(produce())
        ticker = asyncio.create_task(tick())
        pace = Hold(rng.choice((0.0, 0.01, 0.05)))
        async for batch in batched(
            feed.items(), limits, weight=lambda w: len(w) + 1, pace=pace, timer=timer
        ):
            weight = sum(len(w) + 1 for w in batch)
            assert weight <= cap or len(batch) == 1  # one heavy item may exceed it alone
            got.extend(batch)
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)  # a consumer of varying speed
        ticker.cancel()
        await producer
        assert got == words
        assert all(d == pace.hold for d in timer.delays)
        holds += len(timer.delays)
    assert holds > 0  # the interleavings did exercise held batches


async def test_a_consumer_that_is_behind_stops_the_producer_pulling() -> None:
    feed = Feed()
    feed.push(*(str(i) for i in range(1000)))
    limits = StreamLimits(max_buffered=10, max_batch=4, stall_timeout_s=None)
    batches = batched(feed.items(), limits)
    async with aclosing(batches):
        assert await anext(batches) == ["0", "1", "2", "3"]
        await settle()  # the consumer takes nothing more: the producer must stop
        assert feed.pulled <= 4 + 10
        pulled = feed.pulled
        await settle()
        assert feed.pulled == pulled  # paused, not merely slow
        assert await anext(batches) == ["4", "5", "6", "7"]
        await settle()
        assert pulled < feed.pulled <= 8 + 10  # resumed, still bounded


async def test_a_stalled_consumer_is_cut_off_and_the_source_closed() -> None:
    feed = Feed()
    feed.push(*(str(i) for i in range(100)))
    stalled = asyncio.Event()
    limits = StreamLimits(max_buffered=5, max_batch=100, stall_timeout_s=0.01)
    batches = batched(feed.items(), limits, on_stall=stalled.set)
    got = list(await anext(batches))
    await stalled.wait()  # nobody reads: after the stall timeout on_stall is called
    await feed.closed.wait()  # and the source (the engine's stream) is closed
    with pytest.raises(StreamStalled):
        async for batch in batches:
            got.extend(batch)
    assert got == [str(i) for i in range(len(got))]  # what was buffered still came, in order


def test_loop_lag_pace_holds_nothing_while_the_loop_keeps_up() -> None:
    pace = LoopLagPace()
    for _ in range(100):
        assert pace.observe(0.0005) == 0.0


def test_loop_lag_pace_grows_to_its_bound_under_lag_and_returns_to_zero() -> None:
    settings = PaceSettings(max_hold_s=0.05, min_hold_s=0.01, lag_threshold_s=0.002)
    pace = LoopLagPace(settings)
    holds = [pace.observe(0.5) for _ in range(50)]
    assert holds[0] > 0 and max(holds) == 0.05 and all(h <= 0.05 for h in holds)
    after = [pace.observe(0.0) for _ in range(200)]
    assert after[-1] == 0.0
    assert all(h == 0 or h >= settings.min_hold_s for h in holds + after)


def test_loop_lag_pace_keeps_its_hold_while_the_lag_it_removed_stays_away() -> None:
    # The hold is what removes the lag: dropping it as soon as the lag is gone
    # would make the process fall behind again at once (oscillation).
    settings = PaceSettings(max_hold_s=0.05, min_hold_s=0.01, lag_threshold_s=0.002)
    pace = LoopLagPace(settings)
    for _ in range(50):
        pace.observe(0.5)
    calm = [pace.observe(0.0) for _ in range(30)]  # 0.3 s of windows without lag
    assert calm[-1] >= settings.max_hold_s / 2
    assert all(a >= b for a, b in pairwise(calm))  # only ever shrinks
    later = [pace.observe(0.0) for _ in range(200)]
    assert later[-1] == 0.0  # and goes, once the calm lasts


def test_loop_lag_pace_reports_every_step_and_the_idle_drop() -> None:
    now = [0.0]
    steps: list[tuple[float, float]] = []
    pace = LoopLagPace(clock=lambda: now[0], on_step=lambda hold, lag: steps.append((hold, lag)))
    pace.observe(0.5)
    pace.observe(0.5)
    assert len(steps) == 2 and steps[-1] == (pace.hold_s(), pace.lag_s) and steps[-1][0] > 0
    now[0] += pace.settings.idle_after_s + 0.1
    assert pace.hold_s() == 0.0
    assert steps[-1] == (0.0, 0.0)  # the gauges learn the hold is gone


def test_loop_lag_pace_steps_once_per_window_of_wake_up_reports() -> None:
    now = [0.0]
    settings = PaceSettings(sample_s=0.010, lag_threshold_s=0.002, min_hold_s=0.01)
    pace = LoopLagPace(settings, clock=lambda: now[0])
    for i in range(1, 1000):  # 0.1 ms apart: 100 reports a window, all 5 ms late
        now[0] = i * 0.0001
        pace.woke(0.005, now[0])
    assert 0 < pace.hold_s() <= settings.max_hold_s
    assert pace.lag_s > settings.lag_threshold_s
    # no report for longer than idle_after_s: the hold from that busy spell is dropped
    now[0] += settings.idle_after_s + 0.1
    assert pace.hold_s() == 0.0


def test_the_opt_in_interval_is_a_floor_under_the_adaptive_hold() -> None:
    pace = LoopLagPace(floor_s=0.02)
    assert pace.hold_s() == 0.02
    for _ in range(50):
        pace.observe(0.5)
    assert pace.hold_s() == pace.settings.max_hold_s


async def test_streams_report_how_late_they_ran_to_the_pace() -> None:
    feed, pace = Feed(), Hold(0.0)
    batches = batched(feed.items(), pace=pace)
    async with aclosing(batches):
        for item in "abc":
            feed.push(item)
            assert await anext(batches) == [item]
    assert len(pace.delays) >= 3 and all(d >= 0 for d in pace.delays)
