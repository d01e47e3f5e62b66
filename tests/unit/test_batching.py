from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from common.batching import batched


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
