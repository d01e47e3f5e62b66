"""Completions, embeddings and model retrieval under tenancy: the same keys,
permissions, rate-limit headers and metering as chat, over REST and gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from backends.engines.sim import SimConfig
from common.grpcutil.status import parse_status
from gateway.tenancy.runtime import TenancyOptions
from llmgw.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    completions_pb2,
    completions_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
)
from tests.conftest import deploy_with_embedder
from tests.shim_stack import ShimStack, shim_in_front
from tests.tenancy_helpers import bearer, tenant, write_tenants


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ShimStack]:
    """sim-small (alias small) and sim-embed (alias embed); tenant acme may use only small."""
    path = tmp_path / "tenants.yaml"
    keys = write_tenants(path, [tenant("acme", models=["sim-small"]), tenant("beta")])
    d, embedder = await deploy_with_embedder(
        {"sim-small": SimConfig(output_tokens=12)}, 8, TenancyOptions(tenants_file=path)
    )
    async with shim_in_front(d, keys, embedder) as stack:
        yield stack


async def test_a_wrong_key_is_401_everywhere(stack: ShimStack) -> None:
    async with stack.client("llmgw_000000000000_wrongwrongwrongwrong") as client:
        for call in (
            client.completions.create(model="small", prompt="hi"),
            client.embeddings.create(model="embed", input="hi"),
            client.models.retrieve("small"),
        ):
            with pytest.raises(openai.AuthenticationError) as caught:
                await call
            assert caught.value.code == "invalid_api_key"
            assert "wrongwrong" not in caught.value.message
    calls = (
        completions_pb2_grpc.CompletionServiceStub(stack.d.channel).CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                params=completions_pb2.CompletionParams(model="small", prompts=["hi"])
            )
        ),
        embeddings_pb2_grpc.EmbeddingServiceStub(stack.d.channel).CreateEmbedding(
            embeddings_pb2.CreateEmbeddingRequest(
                model="embed", inputs=[embeddings_pb2.EmbeddingInput(text="hi")]
            )
        ),
        chat_pb2_grpc.ModelServiceStub(stack.d.channel).GetModel(
            chat_pb2.GetModelRequest(model="small")
        ),
    )
    for unary in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stream = completions_pb2_grpc.CompletionServiceStub(stack.d.channel).StreamCompletion(
        completions_pb2.StreamCompletionRequest(
            params=completions_pb2.CompletionParams(model="small", prompts=["hi"])
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stream:
            pass
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_models_outside_the_tenant_are_refused_and_hidden(stack: ShimStack) -> None:
    async with stack.client(stack.keys["acme"]) as client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.embeddings.create(model="embed", input="hi")
        assert denied.value.code == "model_not_allowed"
        # Retrieval does not reveal that a model outside the tenant's list exists.
        with pytest.raises(openai.NotFoundError) as hidden:
            await client.models.retrieve("sim-embed")
        assert hidden.value.code == "model_not_found"
        assert (await client.models.retrieve("small")).id == "sim-small"
        done = await client.completions.create(model="small", prompt="alpha beta", max_tokens=2)
        assert len(done.choices[0].text.split()) == 2
    answer = await chat_pb2_grpc.ModelServiceStub(stack.d.channel).GetModel(
        chat_pb2.GetModelRequest(model="embed"), metadata=bearer(stack.keys["beta"])
    )
    assert answer.model.id == "sim-embed"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_pb2_grpc.ModelServiceStub(stack.d.channel).GetModel(
            chat_pb2.GetModelRequest(model="embed"), metadata=bearer(stack.keys["acme"])
        )
    assert parse_status(caught.value).reason == "model_not_found"


async def test_completions_and_embeddings_carry_limits_and_are_metered(stack: ShimStack) -> None:
    async with stack.client(stack.keys["beta"]) as client:
        raw = await client.completions.with_raw_response.create(
            model="small", prompt="alpha beta gamma", max_tokens=3
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "1000"
        first = int(raw.headers["x-ratelimit-remaining-requests"])
        async with client.completions.with_streaming_response.create(
            model="small", prompt="alpha beta gamma", max_tokens=4, stream=True
        ) as streamed:
            assert int(streamed.headers["x-ratelimit-remaining-requests"]) < first
            chunks = [c async for c in await streamed.parse()]
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        embedded = await client.embeddings.with_raw_response.create(
            model="embed", input=["one two", "three"]
        )
        assert "x-ratelimit-remaining-tokens" in embedded.headers
        prompt_tokens = embedded.parse().usage.prompt_tokens

    async with httpx.AsyncClient(base_url=stack.shim.base_url) as http:
        headers = {"authorization": f"Bearer {stack.keys['beta']}"}
        wanted = {("sim-small", 2, 7), ("sim-embed", 1, 0)}
        rows: set[tuple[str, int, int]] = set()
        for _ in range(200):  # metering is written in the background: wait for it
            data = (await http.get("/v1/usage", headers=headers)).json()["data"]
            rows = {(r["model"], r["requests"], r["completion_tokens"]) for r in data}
            if rows == wanted:
                break
            await asyncio.sleep(0.05)
        assert rows == wanted
        embed_row = next(r for r in data if r["model"] == "sim-embed")
        assert embed_row["prompt_tokens"] == prompt_tokens
