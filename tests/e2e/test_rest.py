"""OpenAI SDK through the shim, against both real vLLM models at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

from tests.e2e.conftest import E2EStack
from tests.e2e.probe import GEMMA, MODELS, counted_by_vllm, token_totals

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to fly."}]


@pytest.fixture
async def client(e2e: E2EStack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=e2e.rest + "/v1", api_key="unused", max_retries=0, timeout=120
    ) as c:
        yield c


async def test_lists_both_models(client: openai.AsyncOpenAI) -> None:
    assert {m.id for m in (await client.models.list()).data} >= set(MODELS)


async def test_both_models_concurrently_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    async def whole(model: str) -> tuple[str, str | None, int]:
        reply = await client.chat.completions.create(
            model=model,
            messages=STORY,  # type: ignore[arg-type]
            max_tokens=6,
            temperature=0,
        )
        assert reply.model == model and reply.usage is not None
        return (
            reply.choices[0].message.content or "",
            reply.choices[0].finish_reason,
            reply.usage.completion_tokens,
        )

    async def streamed(model: str) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model=model,
            messages=STORY,  # type: ignore[arg-type]
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage = chunks[-1].usage
        assert usage is not None and chunks[-1].choices == []
        return text, finish, usage.completion_tokens

    # Four requests per model, all in flight together on both vLLM servers.
    jobs = [f(m) for m in MODELS for f in (whole, streamed, whole, streamed)]
    for text, finish, completion_tokens in await asyncio.gather(*jobs):
        assert text.strip(), "empty answer"
        assert finish == "length"  # six tokens cut any story short
        assert completion_tokens == 6


@pytest.mark.parametrize("model", MODELS)
async def test_whole_answer_usage_is_vllms_count(
    client: openai.AsyncOpenAI, e2e: E2EStack, model: str
) -> None:
    vllm = e2e.vllm_url(model)
    before = await token_totals(vllm)
    reply = await client.chat.completions.create(model=model, messages=STORY, max_tokens=5)  # type: ignore[arg-type]
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5
    await counted_by_vllm(vllm, before, reply.usage.prompt_tokens, reply.usage.completion_tokens)


@pytest.mark.parametrize("model", MODELS)
async def test_streamed_usage_is_vllms_count_and_only_shown_when_asked(
    client: openai.AsyncOpenAI, e2e: E2EStack, model: str
) -> None:
    vllm = e2e.vllm_url(model)
    before = await token_totals(vllm)
    stream = await client.chat.completions.create(
        model=model,
        messages=STORY,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 7
    await counted_by_vllm(vllm, before, usage.prompt_tokens, usage.completion_tokens)

    # The sidecar always asks vLLM for usage; a client that did not ask sees none.
    before = await token_totals(vllm)
    stream = await client.chat.completions.create(
        model=model, messages=STORY, max_tokens=7, stream=True
    )  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    # Same prompt, so vLLM counted the same prompt tokens, and exactly 7 generated.
    await counted_by_vllm(vllm, before, usage.prompt_tokens, 7)


async def test_alias_routes_to_the_model(client: openai.AsyncOpenAI, e2e: E2EStack) -> None:
    alias = e2e.model(GEMMA).alias
    reply = await client.chat.completions.create(model=alias, messages=STORY, max_tokens=3)  # type: ignore[arg-type]
    assert reply.model == GEMMA
