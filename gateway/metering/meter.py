"""The meter: takes usage events off the request path and writes them in batches.

``submit`` only appends to a bounded local buffer; a background task writes
batches to the store. A batch the store refuses stays at the head of the
buffer and is retried with a growing pause (writes are idempotent per
request id, so a retry never double-counts). The buffer is bounded: when it
is full the oldest events go, and that is logged with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from gateway.limits.ports import StoreUnavailable
from gateway.metering.model import Granularity, UsageEvent, UsageRecord
from gateway.metering.ports import UsageStore

log = logging.getLogger("llmgw.gateway.metering")


class Meter:
    """Buffers usage events and writes them to a UsageStore."""

    def __init__(self, store: UsageStore, buffer_max: int = 100_000, batch: int = 256) -> None:
        self.store = store
        self._buffer: deque[UsageEvent] = deque()
        self._buffer_max = buffer_max
        self._batch = batch
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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
        """Start the background writer."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def submit(self, event: UsageEvent) -> None:
        """Queue one event (never blocks, never raises)."""
        if len(self._buffer) >= self._buffer_max:
            self._buffer.popleft()
            self._dropped += 1
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
            return True

    async def _run(self) -> None:
        pause = 0.0
        while True:
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

    async def close(self) -> None:
        """Stop the writer after one last flush; log what could not be written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 2.0)
        if self._buffer:
            log.error("%d usage events not written at shutdown", len(self._buffer))
        await self.store.close()
