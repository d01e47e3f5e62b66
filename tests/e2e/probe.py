"""Reading vLLM's own view of things: its Prometheus metrics, polled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from backends.engines.vllm_protocol import parse_metrics

SMOLLM = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
MODELS = (SMOLLM, GEMMA)  # the chat models
MINILM = "all-minilm-l6-v2"  # the embedding model


async def series(base_url: str) -> dict[str, float]:
    """Every ``vllm:`` sample of /metrics, keyed by name and labels."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(base_url + "/metrics")).text
    values = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def total(values: dict[str, float], name: str) -> float:
    """One series summed over its label sets."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


async def running(base_url: str) -> int:
    """vllm:num_requests_running now."""
    async with httpx.AsyncClient(timeout=5) as client:
        return parse_metrics((await client.get(base_url + "/metrics")).text).running


async def token_totals(base_url: str) -> tuple[float, float]:
    """(vllm:prompt_tokens_total, vllm:generation_tokens_total)."""
    values = await series(base_url)
    return total(values, "vllm:prompt_tokens_total"), total(values, "vllm:generation_tokens_total")


async def eventually(check: Callable[[], object], timeout_s: float, what: str) -> float:
    """Await ``check()`` (a coroutine function returning truthy) until it holds; seconds taken."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(0.1)


async def counted_by_vllm(
    base_url: str, before: tuple[float, float], prompt: int, completion: int
) -> None:
    """Wait until vLLM's own counters grew by exactly this usage (they are updated
    after the request ends, a moment after the client saw it)."""
    seen: list[tuple[float, float]] = []

    async def grew() -> bool:
        now = await token_totals(base_url)
        seen.append((now[0] - before[0], now[1] - before[1]))
        return seen[-1] == (prompt, completion)

    try:
        await eventually(grew, 10, "vLLM's token counters match the usage")
    except AssertionError:
        raise AssertionError(
            f"client usage (prompt {prompt}, completion {completion}) != vLLM's counters "
            f"(last delta {seen[-1]})"
        ) from None
