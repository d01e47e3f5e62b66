"""Several streams as one: the events of each, tagged with its position.

A completions request with several prompts or ``n`` choices is served as one
generation per choice through the same pipeline (routing, retries,
fallbacks), under one admission settled once (``ChatCompletionService.stream_all``);
this merges their streams in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")

# Events queued ahead of a slow consumer before the producers wait (backpressure).
_QUEUE_SIZE = 64


class _Done:
    """A stream ended normally."""


_DONE = _Done()


async def merged(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T], None]:
    """Yield ``(position, event)`` from every stream as events arrive.

    The first stream to raise cancels the others and its error is raised;
    closing this generator cancels every stream. One stream is passed
    through without a task or a queue.
    """
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for event in only:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, T | _Done | BaseException]] = asyncio.Queue(_QUEUE_SIZE)

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        try:
            async with aclosing(stream) as events:
                async for event in events:
                    await queue.put((index, event))
        except Exception as error:  # handed to the consumer, which raises it
            await queue.put((index, error))
            return
        await queue.put((index, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if isinstance(item, _Done):
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
