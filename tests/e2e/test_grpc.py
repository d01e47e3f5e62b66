"""The same over gRPC with the generated stubs, both real models at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.e2e.conftest import E2EStack
from tests.e2e.probe import MODELS, counted_by_vllm, token_totals

STORY = "Write a long story about a dragon who learns to fly."


def params(model: str, max_tokens: int) -> pb.ChatCompletionParams:
    return pb.ChatCompletionParams(
        model=model,
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=STORY)],
        max_tokens=max_tokens,
        temperature=0,
    )


@pytest.fixture
async def chat(e2e: E2EStack) -> AsyncIterator[pb_grpc.ChatServiceStub]:
    async with grpc.aio.insecure_channel(e2e.grpc) as channel:
        yield pb_grpc.ChatServiceStub(channel)


async def test_both_models_concurrently_unary_and_stream(chat: pb_grpc.ChatServiceStub) -> None:
    async def unary(model: str) -> tuple[str, int, int]:
        reply = await chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params(model, 6)), timeout=120
        )
        assert reply.model == model
        return reply.message.content, reply.finish_reason, reply.usage.completion_tokens

    async def stream(model: str) -> tuple[str, int, int]:
        events = [
            e
            async for e in chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=params(model, 6), include_usage=True),
                timeout=120,
            )
        ]
        assert events[0].WhichOneof("event") == "start" and events[0].start.model == model
        assert events[-1].WhichOneof("event") == "end"
        text = "".join(e.delta.content for e in events if e.WhichOneof("event") == "delta")
        return text, events[-1].end.finish_reason, events[-1].end.usage.completion_tokens

    jobs = [f(m) for m in MODELS for f in (unary, stream, unary, stream)]
    for text, finish, completion_tokens in await asyncio.gather(*jobs):
        assert text.strip(), "empty answer"
        assert finish == pb.FINISH_REASON_LENGTH
        assert completion_tokens == 6


@pytest.mark.parametrize("model", MODELS)
async def test_usage_is_vllms_count(
    chat: pb_grpc.ChatServiceStub, e2e: E2EStack, model: str
) -> None:
    vllm = e2e.vllm_url(model)
    before = await token_totals(vllm)
    reply = await chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=params(model, 4)), timeout=120
    )
    assert reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4
    await counted_by_vllm(vllm, before, reply.usage.prompt_tokens, 4)

    before = await token_totals(vllm)
    events = [
        e
        async for e in chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params(model, 4), include_usage=True), timeout=120
        )
    ]
    usage = events[-1].end.usage
    assert usage.completion_tokens == 4
    await counted_by_vllm(vllm, before, usage.prompt_tokens, 4)
