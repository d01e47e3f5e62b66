from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from backends.engine import (
    Delta,
    EngineFailed,
    EngineMessage,
    EngineRejectedRequest,
    EngineRequest,
    EngineUnavailable,
    Finished,
    FinishReason,
)
from backends.engines.sim import FailureMode, SimConfig, SimEngine


def request(content: str = "red green blue", max_tokens: int = 100, **kw: object) -> EngineRequest:
    return EngineRequest("r1", "m", [EngineMessage("user", content)], max_tokens, **kw)  # type: ignore[arg-type]


async def run(engine: SimEngine, req: EngineRequest) -> tuple[str, Finished]:
    text = ""
    async for event in engine.generate(req):
        if isinstance(event, Delta):
            text += event.text
        else:
            return text, event
    raise AssertionError("no Finished event")


async def test_output_is_deterministic_from_prompt_words() -> None:
    engine = SimEngine(SimConfig(output_tokens=6))
    text, done = await run(engine, request())
    assert text == (await run(engine, request()))[0]
    assert len(text.split()) == 6 and set(text.split()) <= {"red", "green", "blue"}
    assert done.reason is FinishReason.STOP and done.completion_tokens == 6
    assert done.prompt_tokens > 0
    other, _ = await run(engine, request(seed=1))
    assert other != text


async def test_max_tokens_below_natural_length_finishes_with_length() -> None:
    text, done = await run(SimEngine(SimConfig(output_tokens=50)), request(max_tokens=3))
    assert len(text.split()) == 3
    assert done.reason is FinishReason.LENGTH and done.completion_tokens == 3


async def test_stop_sequence_ends_the_answer_before_it() -> None:
    engine = SimEngine(SimConfig(output_tokens=50))
    full, _ = await run(engine, request("alpha beta"))
    text, done = await run(engine, request("alpha beta", stop=["beta"]))
    assert done.reason is FinishReason.STOP
    assert "beta" not in text and full.startswith(text)


async def test_prompt_longer_than_context_is_rejected() -> None:
    engine = SimEngine(SimConfig(max_context_tokens=100))
    with pytest.raises(EngineRejectedRequest, match="maximum context length is 100"):
        await run(engine, request("x" * 1000))


async def test_requests_beyond_capacity_wait_in_a_fifo_queue() -> None:
    engine = SimEngine(SimConfig(max_concurrency=1, itl_ms=5, output_tokens=5))
    first = asyncio.create_task(run(engine, request("first")))
    second = asyncio.create_task(run(engine, request("second")))
    await asyncio.sleep(0.002)
    load = engine.load()
    assert (load.running, load.waiting, load.capacity) == (1, 1, 1)
    assert engine.active == 2
    await asyncio.gather(first, second)
    assert engine.load().running == engine.load().waiting == 0


async def test_a_full_queue_refuses_work() -> None:
    engine = SimEngine(SimConfig(max_concurrency=1, max_waiting=1, failure_mode=FailureMode.HANG))
    tasks = [asyncio.create_task(run(engine, request())) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(EngineUnavailable):
        await run(engine, request())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert engine.active == 0 and engine.aborted == 2


async def test_closing_the_stream_aborts_and_frees_the_slot() -> None:
    engine = SimEngine(SimConfig(max_concurrency=1, itl_ms=1, output_tokens=1000))
    async with aclosing(engine.generate(request(max_tokens=1000))) as stream:
        await anext(stream)
        assert engine.active == 1
    assert engine.active == 0 and engine.aborted == 1
    _, done = await run(engine, request(max_tokens=2))  # the slot is free again
    assert done.completion_tokens == 2


async def test_latency_model_schedules_tokens() -> None:
    engine = SimEngine(SimConfig(ttft_ms=30, itl_ms=10, output_tokens=4))
    loop = asyncio.get_running_loop()
    start = loop.time()
    stamps = []
    async for _ in engine.generate(request()):
        stamps.append(loop.time() - start)
    assert stamps[0] >= 0.029  # never earlier than the model says
    assert stamps[-1] >= 0.029 + 3 * 0.01


@pytest.mark.parametrize(
    ("mode", "error", "tokens_before"),
    [
        (FailureMode.ERROR_AT_START, EngineFailed, 0),
        (FailureMode.ERROR_AFTER_TOKENS, EngineFailed, 2),
    ],
)
async def test_injected_errors(
    mode: FailureMode, error: type[Exception], tokens_before: int
) -> None:
    engine = SimEngine(SimConfig(failure_mode=mode, failure_after_tokens=2))
    seen = 0
    with pytest.raises(error):
        async for event in engine.generate(request()):
            seen += isinstance(event, Delta)
    assert seen == tokens_before
    assert engine.active == 0


async def test_hang_never_yields_until_cancelled() -> None:
    engine = SimEngine(SimConfig(failure_mode=FailureMode.HANG))
    task = asyncio.create_task(run(engine, request()))
    await asyncio.sleep(0.05)
    assert not task.done() and engine.active == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.active == 0


async def test_failure_probability_fails_some_requests_only() -> None:
    engine = SimEngine(
        SimConfig(failure_mode=FailureMode.ERROR_AT_START, failure_probability=0.5, random_seed=1)
    )
    outcomes = await asyncio.gather(
        *(run(engine, request()) for _ in range(200)), return_exceptions=True
    )
    failures = sum(isinstance(o, EngineFailed) for o in outcomes)
    assert 60 < failures < 140
