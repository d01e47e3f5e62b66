"""Adaptive batching of an async stream: coalesce under backpressure, never delay.

A producer task drains the source into a buffer while the consumer is busy
(writing the previous message to a socket, say). Each time the consumer
asks for more it gets everything that arrived meanwhile, as one list. When
the consumer keeps up, every list holds one item and nothing waits; when it
falls behind (a saturated CPU, a slow client), items are merged into fewer,
larger messages, so the per-message cost of gRPC and HTTP is paid once per
batch instead of once per token. vLLM's ``--stream-interval`` trades
latency for the same saving with a fixed interval; this needs no setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def batched(source: AsyncIterator[T]) -> AsyncGenerator[list[T], None]:
    """Yield lists of the items that arrived since the previous yield.

    Order is kept. An exception from the source is raised after the items
    before it have been yielded. Closing or cancelling this generator
    cancels the producer, which closes the source.
    """
    buffer: list[T] = []
    failure: list[BaseException] = []
    finished = False
    wake = asyncio.Event()

    async def pump() -> None:
        nonlocal finished
        try:
            async for item in source:
                buffer.append(item)
                wake.set()
        except Exception as error:
            failure.append(error)
        finally:
            finished = True
            wake.set()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    producer = asyncio.create_task(pump())
    try:
        while True:
            if not buffer and not finished:
                await wake.wait()
            wake.clear()
            if buffer:
                items = buffer[:]
                buffer.clear()
                yield items
                continue
            if failure:
                raise failure[0]
            if finished:
                return
    finally:
        if not producer.done():
            producer.cancel()
        # Wait for the producer so the source is closed before we return.
        await asyncio.gather(producer, return_exceptions=True)
