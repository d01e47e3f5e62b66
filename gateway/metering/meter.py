"""The meter: takes usage events off the request path and writes them in batches.

``submit`` only appends to a bounded local buffer; a background task writes
batches to the store. A batch the store refuses stays at the head of the
buffer and is retried with a growing pause (writes are idempotent per
request id, so a retry never double-counts). The buffer is bounded: when it
is full the oldest events go, and that is logged with a count.

At shutdown, what the store cannot take is appended to a local spool file
(``gateway.metering.spool``) when one is configured, and replayed at the
next start. Anything dropped (a full buffer, no spool, an unreadable spool
line) is logged and reported to ``on_dropped`` (a Prometheus counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence

from gateway.limits.ports import StoreUnavailable
from gateway.metering.model import Granularity, UsageEvent, UsageRecord
from gateway.metering.ports import UsageStore
from gateway.metering.spool import UsageSpool

log = logging.getLogger("llmgw.gateway.metering")

# Called with (reason, number of events) whenever usage events are lost.
DropHook = Callable[[str, int], None]


class Meter:
    """Buffers usage events and writes them to a UsageStore."""

    def __init__(
        self,
        store: UsageStore,
        buffer_max: int = 100_000,
        batch: int = 256,
        spool: UsageSpool | None = None,
        on_dropped: DropHook | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self._on_dropped = on_dropped
        self._buffer: deque[UsageEvent] = deque()
        self._buffer_max = buffer_max
        self._batch = batch
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._flush_lock = asyncio.Lock()

    @property
    def buffered(self) -> int:
        """Events not yet written."""
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        """Events lost because the buffer was full."""
        return self._dropped

    def start(self) -> None:
        """Replay the spool of a previous shutdown, then start the background writer."""
        if self._task is None:
            self._replay()
            self._task = asyncio.create_task(self._run())

    def _replay(self) -> None:
        if self.spool is None:
            return
        try:
            events = self.spool.claim()
        except OSError as error:
            log.error("usage spool %s cannot be read: %s", self.spool.path, error)
            return
        if self.spool.skipped:
            self._drop("unreadable_spool_line", self.spool.skipped)
        if events:
            log.warning(
                "replaying %d usage events spooled while the store was unreachable (%s)",
                len(events),
                self.spool.path,
            )
            self._buffer.extendleft(reversed(events))  # older than anything new
            self._wakeup.set()

    def _drop(self, reason: str, count: int) -> None:
        self._dropped += count
        if self._on_dropped is not None:
            self._on_dropped(reason, count)

    def submit(self, event: UsageEvent) -> None:
        """Queue one event (never blocks, never raises)."""
        if len(self._buffer) >= self._buffer_max:
            self._buffer.popleft()
            self._drop("buffer_full", 1)
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("metering buffer full: %d usage events dropped so far", self._dropped)
        self._buffer.append(event)
        self._wakeup.set()

    async def flush(self) -> bool:
        """Write everything buffered; False if the store refused (events stay buffered)."""
        async with self._flush_lock:
            while self._buffer:
                batch = [self._buffer[i] for i in range(min(self._batch, len(self._buffer)))]
                try:
                    await self.store.record(batch)
                except StoreUnavailable as error:
                    log.warning(
                        "metering store unreachable (%s); %d events buffered",
                        error,
                        len(self._buffer),
                    )
                    return False
                for _ in batch:
                    self._buffer.popleft()
            if self.spool is not None and self.spool.claimed:
                self.spool.release()  # every replayed event is in the store now
                log.info("usage spooled at a previous shutdown is written")
            return True

    async def _run(self) -> None:
        pause = 0.0
        while not self._closed:
            if pause:
                await asyncio.sleep(pause)
            else:
                await self._wakeup.wait()
            self._wakeup.clear()
            try:
                ok = await self.flush()
            except Exception:  # the writer must survive anything
                log.exception("metering write failed")
                ok = False
            pause = 0.0 if ok else min(5.0, max(0.2, pause * 2))

    async def query(
        self,
        tenants: Sequence[str],
        granularity: Granularity,
        start_s: float,
        end_s: float,
        model: str | None = None,
    ) -> list[UsageRecord]:
        """Usage counters from the store."""
        return await self.store.query(tenants, granularity, start_s, end_s, model)

    async def close(self, flush_timeout_s: float = 2.0) -> None:
        """Stop the writer after one last flush; spool what the store did not take
        (or, without a spool, log and count it as dropped)."""
        if self._task is not None:
            self._closed = True
            self._task.cancel()
            # Bounded: a cancel that lands inside a Redis call is not always honoured
            # at once by the client library; the flush below waits for its lock anyway.
            await asyncio.wait({self._task}, timeout=flush_timeout_s)
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), flush_timeout_s)
        left = list(self._buffer)
        if left and self.spool is not None:
            try:
                self.spool.append(left)
            except OSError as error:
                log.error("usage spool %s cannot be written: %s", self.spool.path, error)
                self.spool.abandon()  # a claimed file stays, for the next start
            else:
                log.warning(
                    "usage store unreachable at shutdown: %d usage events spooled to %s "
                    "(replayed at the next start)",
                    len(left),
                    self.spool.path,
                )
                left = []
        if self.spool is not None:
            self.spool.release()  # what it held is in the store or in the new spool
        if left:
            log.error("%d usage events not written at shutdown: dropped", len(left))
            self._drop("shutdown", len(left))
        self._buffer.clear()
        await self.store.close()
