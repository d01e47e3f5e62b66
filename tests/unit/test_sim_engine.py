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
from backends.engines import sim
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
    await asyncio.sleep(0)  # both start; the first holds the slot for its five tokens
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


def conversation(system: str, *turns: str) -> EngineRequest:
    messages = [EngineMessage("system", system)]
    for i, text in enumerate(turns):
        messages.append(EngineMessage("user" if i % 2 == 0 else "assistant", text))
    return EngineRequest("r", "m", messages, 4)


async def test_prefix_cache_hits_the_repeated_prefix_and_prefills_only_the_rest() -> None:
    engine = SimEngine(SimConfig(output_tokens=2))
    system = "You are a careful assistant. " * 40  # ~290 tokens
    first = conversation(system, "what are ducks?")
    await run(engine, first)
    stats = engine.prefix_cache_stats()
    assert stats.hits == 0 and stats.queries > 250
    queried = stats.queries
    # The next turn repeats the whole first prompt: all its full blocks are hits.
    await run(engine, conversation(system, "what are ducks?", "birds", "and geese?"))
    hits = engine.prefix_cache_stats().hits
    assert hits >= queried - 16 and hits <= engine.prefix_cache_stats().queries - queried
    # Another conversation on the same system prompt reuses only the system prompt.
    before = engine.prefix_cache_stats().hits
    await run(engine, conversation(system, "tell me about trains"))
    shared = engine.prefix_cache_stats().hits - before
    assert 250 <= shared < queried


async def test_prefix_cache_time_saved_is_prefill_of_the_cached_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(sim, "_sleep", record)
    cfg = SimConfig(ttft_ms=10, prefill_ms_per_1k_tokens=2000, output_tokens=1)  # 2 ms a token
    long = "word " * 400  # ~500 tokens
    engine = SimEngine(cfg)
    await run(engine, conversation(long, "q"))
    await run(engine, conversation(long, "q"))
    cold, warm = waits
    prompt = engine.prefix_cache_stats().queries // 2
    assert cold == pytest.approx((10 + 2 * prompt) / 1000)
    # Warm: only the tokens after the last full cached block are prefilled (< one block).
    assert 0.010 <= warm < (10 + 2 * 16) / 1000


async def test_a_full_prefix_cache_evicts_the_least_recently_used_blocks() -> None:
    engine = SimEngine(SimConfig(output_tokens=1, prefix_cache_blocks=20))
    a, b = "a" * 64 * 15, "b" * 64 * 15  # 15 blocks each: both do not fit
    await run(engine, conversation(a, "q"))
    await run(engine, conversation(b, "q"))
    before = engine.prefix_cache_stats().hits
    await run(engine, conversation(a, "q"))  # a's first blocks were evicted by b
    assert engine.prefix_cache_stats().hits == before
    off = SimEngine(SimConfig(output_tokens=1, prefix_cache_blocks=0))
    await run(off, conversation(a, "q"))
    await run(off, conversation(a, "q"))
    assert off.prefix_cache_stats().hits == 0


async def test_the_sidecar_exports_prefix_cache_counters_like_vllm() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from backends.metered import EngineLoadCollector

    engine = SimEngine(SimConfig(output_tokens=1))
    system = "x" * 64 * 4
    for _ in range(2):
        await run(engine, conversation(system, "q"))
    registry = CollectorRegistry()
    registry.register(EngineLoadCollector(engine, "m"))
    text = generate_latest(registry).decode()
    stats = engine.prefix_cache_stats()
    assert f'llmgw_sidecar_prefix_cache_queries_total{{model="m"}} {float(stats.queries)}' in text
    assert f'llmgw_sidecar_prefix_cache_hits_total{{model="m"}} {float(stats.hits)}' in text
    assert stats.hits > 0


async def test_the_next_turn_finds_the_previous_answer_cached_too() -> None:
    engine = SimEngine(SimConfig(output_tokens=40))
    system = "s" * 64 * 3
    question = "alpha beta gamma delta epsilon " * 4
    answer, _ = await run(engine, conversation(system, question))
    queried = engine.prefix_cache_stats().queries
    await run(engine, conversation(system, question, answer, "and then?"))
    stats = engine.prefix_cache_stats()
    next_prompt = stats.queries - queried
    # Everything but the new question and the last partial block was cached.
    assert stats.hits >= next_prompt - (len("and then?") // 4 + 4) - 16 - 2
