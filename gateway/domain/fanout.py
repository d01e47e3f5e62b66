"""Several streams as one: the events of each, tagged with its position.

A completions request with several prompts or ``n`` choices is served as one
generation per choice through the same pipeline (routing, retries,
fallbacks), under one admission settled once (``ChatCompletionService.stream_all``);
this merges their streams in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
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


def one_per_prompt(choices: Sequence[T | None], n: int, preferred: Callable[[T], bool]) -> list[T]:
    """One choice of each prompt that has any (choice ``i`` continues prompt
    ``i // n``; None: never started), a ``preferred`` one where there is one:
    whose prompt tokens to count, once per prompt, as OpenAI counts them."""
    picked = []
    for first in range(0, len(choices), n):
        group = [c for c in choices[first : first + n] if c is not None]
        if group:
            picked.append(next((c for c in group if preferred(c)), group[0]))
    return picked
