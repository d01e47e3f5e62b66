"""Merging the streams of several choices: arrival order, errors, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest

from gateway.domain.fanout import merged


async def ticks(name: str, gate: asyncio.Event | None, count: int) -> AsyncGenerator[str, None]:
    for i in range(count):
        if gate is not None and i == 1:
            await gate.wait()
        yield f"{name}{i}"


async def test_events_are_tagged_with_their_stream_and_keep_order_within_it() -> None:
    got = [(i, e) async for i, e in merged([ticks("a", None, 3), ticks("b", None, 2)])]
    assert sorted(got) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [e for i, e in got if i == 0] == ["a0", "a1", "a2"]


async def test_a_slow_stream_does_not_hold_back_the_others() -> None:
    gate = asyncio.Event()
    seen: list[str] = []
    async with aclosing(merged([ticks("slow", gate, 2), ticks("fast", None, 3)])) as events:
        async for _, event in events:
            seen.append(event)
            if event == "fast2":
                gate.set()  # the slow stream's second event comes only now
    assert seen.index("fast2") < seen.index("slow1")


async def test_an_error_cancels_the_others_and_is_raised() -> None:
    closed = asyncio.Event()

    async def forever() -> AsyncGenerator[str, None]:
        try:
            yield "x"
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.set()

    async def failing() -> AsyncGenerator[str, None]:
        yield "y"
        raise ValueError("backend broke")

    with pytest.raises(ValueError, match="backend broke"):
        async for _ in merged([forever(), failing()]):
            pass
    assert closed.is_set()


async def test_closing_the_merge_closes_every_stream() -> None:
    closed: list[int] = []

    async def endless(n: int) -> AsyncGenerator[int, None]:
        try:
            while True:
                yield n
                await asyncio.sleep(0)
        finally:
            closed.append(n)

    async with aclosing(merged([endless(1), endless(2)])) as events:
        async for _ in events:
            break
    assert sorted(closed) == [1, 2]
