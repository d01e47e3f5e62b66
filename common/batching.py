"""Coalescing of an async stream: merge under load, bounded, never delay when idle.

A producer task drains the source into a buffer while the consumer is busy
(writing the previous message to a socket, say). Each time the consumer
asks for more it gets everything that arrived meanwhile, as one list. When
the consumer keeps up, every list holds one item and nothing waits; when it
falls behind (a saturated CPU, a slow client), items are merged into fewer,
larger messages, so the per-message cost of gRPC and HTTP is paid once per
batch instead of once per token.

Three additions keep that safe and make it degrade gracefully:

- **Bounded buffer (backpressure).** The producer stops pulling from the
  source once ``max_buffered`` weight (for text: characters) waits for the
  consumer, so a client that stops reading pauses the stream upstream
  instead of growing this process. If the buffer stays full for
  ``stall_timeout_s`` the stream is *stalled*: the source is closed (the
  engine aborts), ``on_stall`` is called (the transport ends the call with
  an error) and the consumer, if it ever asks again, gets the buffered
  items and then ``StreamStalled``.
- **Capped batches.** One batch never weighs more than ``max_batch`` (an
  item heavier than that goes alone), so a merged message stays under the
  receiver's message-size limit however far behind the consumer was.
- **Adaptive hold.** A ``Pace`` (see ``common.pace``) says how long a stream
  may hold its next message so that more tokens merge into it: zero while
  the process keeps up, up to a bound (50 ms by default) while its event
  loop lags. The first batch is never held, a hold ends early when the
  source ends or a full batch is waiting, and with a zero hold nothing is
  added. vLLM's ``--stream-interval`` does the same with a fixed interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


class StreamStalled(Exception):
    """The consumer took nothing from a full buffer for the stall timeout."""


class Pace(Protocol):
    """How long a stream may hold its next message to merge more into it."""

    def hold_s(self) -> float:
        """Seconds to hold now (0: send at once)."""
        ...

    def woke(self, delay_s: float, now: float) -> None:
        """A stream's consumer ran ``delay_s`` after it was woken: the loop's lag."""
        ...


class Cancellable(Protocol):
    """A scheduled callback that can be called off (asyncio.TimerHandle)."""

    def cancel(self) -> None:
        """Do not run the callback."""
        ...


# Schedules a callback after a delay; loop.call_later by default, a fake in tests.
Timer = Callable[[float, Callable[[], None]], Cancellable]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds on one stream's buffer and on each merged batch, in weight units.

    With ``text_weight`` a unit is a character of text (a UTF-8 character is
    at most 4 bytes, so 1 MiB characters stay under a 16 MiB message limit).
    """

    max_buffered: int = 256 * 1024
    max_batch: int = 1024 * 1024
    stall_timeout_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.max_buffered < 1 or self.max_batch < 1:
            raise ValueError("max_buffered and max_batch must be at least 1")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be positive (or None: never)")


UNBOUNDED = StreamLimits(max_buffered=2**62, max_batch=2**62, stall_timeout_s=None)


def _one(item: object) -> int:
    return 1


async def batched(
    source: AsyncIterator[T],
    limits: StreamLimits = UNBOUNDED,
    *,
    weight: Callable[[T], int] = _one,
    pace: Pace | None = None,
    on_stall: Callable[[], None] | None = None,
    timer: Timer | None = None,
) -> AsyncGenerator[list[T], None]:
    """Yield lists of the items that arrived since the previous yield.

    Order is kept and nothing is dropped. An exception from the source is
    raised after the items before it have been yielded. Closing or
    cancelling this generator cancels the producer, which closes the source.
    """
    loop = asyncio.get_running_loop()
    schedule: Timer = timer or loop.call_later
    max_buffered, max_batch, stall_s = limits.max_buffered, limits.max_batch, limits.stall_timeout_s
    # A hold ends once this much waits: a full batch, or a full buffer (the
    # producer has stopped pulling, so waiting longer gathers nothing).
    enough = min(max_batch, max_buffered)
    buffer: deque[tuple[T, int]] = deque()
    buffered = 0  # total weight in the buffer
    failure: BaseException | None = None
    finished = False
    holding = False
    waiter: asyncio.Future[None] | None = None  # the consumer waits on it
    space: asyncio.Future[None] | None = None  # the producer waits on it (buffer full)
    clock = time.monotonic
    woken_at = 0.0  # when the consumer was last woken: how late it runs is the loop's lag

    def wake() -> None:
        nonlocal woken_at
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            if pace is not None:
                woken_at = clock()

    async def pump() -> None:
        nonlocal buffered, finished, failure, space
        try:
            async for item in source:
                w = weight(item)
                buffer.append((item, w))
                buffered += w
                if not holding or buffered >= enough:
                    wake()
                while buffered >= max_buffered:
                    # The consumer is behind: stop pulling (backpressure upstream).
                    space = loop.create_future()
                    try:
                        async with asyncio.timeout(stall_s):
                            await space
                    except TimeoutError:
                        failure = StreamStalled(
                            f"the receiver took nothing for {stall_s:g}s with the buffer full"
                        )
                        if on_stall is not None:
                            on_stall()
                        return
        except Exception as error:
            failure = error
        finally:
            finished = True
            wake()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    producer = asyncio.create_task(pump())
    first = True
    try:
        while True:
            if not first and pace is not None and not finished and buffered < enough:
                hold = pace.hold_s()
                if hold > 0:
                    # Let tokens gather; the producer ends the hold early when
                    # the source ends or a full batch is waiting.
                    holding = True
                    waiter = loop.create_future()
                    handle = schedule(hold, wake)
                    try:
                        await waiter
                    finally:
                        holding = False
                        handle.cancel()
                    now = clock()
                    pace.woke(now - woken_at, now)
            if not buffer and not finished:
                waiter = loop.create_future()
                await waiter
                if pace is not None:
                    now = clock()
                    pace.woke(now - woken_at, now)
            if buffer:
                item, w = buffer.popleft()
                batch = [item]
                taken = w
                while buffer and taken + buffer[0][1] <= max_batch:
                    item, w = buffer.popleft()
                    batch.append(item)
                    taken += w
                buffered -= taken
                if space is not None and buffered < max_buffered and not space.done():
                    space.set_result(None)
                first = False
                yield batch
                continue
            if failure is not None:
                raise failure
            if finished:
                return
    finally:
        if not producer.done():
            producer.cancel()
        # Wait for the producer so the source is closed before we return.
        await asyncio.gather(producer, return_exceptions=True)
