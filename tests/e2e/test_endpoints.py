"""Legacy completions and embeddings on real vLLM, over REST (the OpenAI SDK
through the shim) and gRPC: a raw prompt reaches vLLM's /v1/completions (the
shared stack's chat models), and all-MiniLM-L6-v2 (from its PyPI package)
answers /v1/embeddings in a stack of its own (``make run-vllm`` serves all three
together; the launcher test checks that)."""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import openai
import pytest

from common.grpcutil.status import parse_status
from devstack.stack import Stack
from devstack.vllm import VllmModel, vllm_plan, wait_models_answer
from llmgw.v1 import (
    chat_pb2,
    completions_pb2,
    completions_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
)
from tests.conftest import free_port
from tests.e2e.conftest import E2EStack
from tests.e2e.probe import MINILM, SMOLLM

PROMPT = "The capital of France is"
DIMENSIONS = 384


@pytest.fixture(scope="module")
def embedder(installed: None) -> Iterator[E2EStack]:
    """vLLM serving all-MiniLM-L6-v2 on its pooling runner, its sidecar, a gateway
    and a shim, on free ports."""
    plan = vllm_plan(
        rest_port=free_port(),
        grpc_port=free_port(),
        sidecar_ports=(free_port(),),
        vllm_ports=(free_port(),),
        only=(MINILM,),
    )
    stack = Stack(plan)
    try:
        stack.start()
        print(f"e2e: starting the embedding stack (logs in {stack.log_dir})", file=sys.stderr)
        stack.wait_ready(timeout_s=600)
        wait_models_answer(plan, timeout_s=120)
        yield E2EStack(stack, [m for m in plan.models if isinstance(m, VllmModel)])
    finally:
        stack.stop()


@pytest.fixture
async def embed_client(embedder: E2EStack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=embedder.rest + "/v1", api_key="e2e-unused-key", max_retries=0, timeout=300
    ) as c:
        yield c


@pytest.fixture
async def client(e2e: E2EStack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=e2e.rest + "/v1", api_key="e2e-unused-key", max_retries=0, timeout=300
    ) as c:
        yield c


@pytest.fixture
async def channel(e2e: E2EStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(e2e.grpc) as c:
        yield c


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_rest_completion_whole_stream_and_echo(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(
        model=SMOLLM, prompt=PROMPT, max_tokens=8, temperature=0
    )
    assert whole.object == "text_completion" and whole.model == SMOLLM
    assert whole.id.startswith("cmpl-")
    [choice] = whole.choices
    assert choice.text and choice.finish_reason in ("length", "stop")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 8
    assert whole.usage.prompt_tokens > 0
    stream = await client.completions.create(
        model=SMOLLM,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text  # greedy
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    echoed = await client.completions.create(
        model=SMOLLM, prompt=PROMPT, max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == PROMPT + choice.text


async def test_rest_completion_logprobs(client: openai.AsyncOpenAI) -> None:
    done = await client.completions.create(
        model=SMOLLM, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2
    )
    [choice] = done.choices
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == choice.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    # vLLM gives the 2 most likely tokens, plus the sampled one when it is not among them.
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    stream = await client.completions.create(
        model=SMOLLM, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, stream=True
    )
    tokens = [
        t
        async for chunk in stream
        for c in chunk.choices
        if c.logprobs is not None and c.logprobs.tokens
        for t in c.logprobs.tokens
    ]
    assert tokens == lp.tokens


async def test_rest_completion_prompt_list_and_n(client: openai.AsyncOpenAI) -> None:
    prompts = ["One, two,", "Red, green,"]
    done = await client.completions.create(
        model=SMOLLM, prompt=prompts, n=2, max_tokens=4, temperature=0, echo=True
    )
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    # Prompt-major, as OpenAI orders them: choices 0-1 continue the first prompt, 2-3 the
    # second (echoed, so each choice says which). Not compared with each other: greedy
    # choices computed in one batch may differ on vLLM, whose kernels are not batch-invariant.
    for choice in done.choices:
        prompt = prompts[choice.index // 2]
        assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 16


async def test_rest_completion_over_the_context_names_the_prompt(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.completions.create(model=SMOLLM, prompt="word " * 3000, max_tokens=4)
    assert caught.value.param == "prompt"


async def test_grpc_completion_stream(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    params = completions_pb2.CompletionParams(
        model="smollm2", prompts=[PROMPT], max_tokens=6, temperature=0
    )
    events = [
        m
        async for m in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(params=params, include_usage=True)
        )
    ]
    assert events[0].start.model == SMOLLM
    assert "".join(m.delta.text for m in events if m.HasField("delta"))
    assert events[-2].choice_end.finish_reason in (
        chat_pb2.FINISH_REASON_LENGTH,
        chat_pb2.FINISH_REASON_STOP,
    )
    assert 0 < events[-1].end.usage.completion_tokens <= 6


@pytest.mark.timeout(900)  # the first one waits for the embedding stack
async def test_rest_embeddings_float_and_base64(
    embed_client: openai.AsyncOpenAI, embedder: E2EStack
) -> None:
    client = embed_client
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell today."]
    floats = await client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    assert floats.model == MINILM and [d.index for d in floats.data] == [0, 1, 2]
    vectors = [d.embedding for d in floats.data]
    assert all(len(v) == DIMENSIONS for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    # A real sentence model: the paraphrase is closer than the unrelated sentence.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(texts)
    # The SDK's default (base64, decoded by the SDK) carries the same float32 values.
    decoded = await client.embeddings.create(model="minilm", input=texts)
    assert [d.embedding for d in decoded.data] == vectors
    # What vLLM itself answers, through float32 on the wire.
    async with httpx.AsyncClient(timeout=120) as http:
        direct = await http.post(
            embedder.vllm_url(MINILM) + "/v1/embeddings", json={"model": MINILM, "input": texts[0]}
        )
    expected = direct.json()["data"][0]["embedding"]
    assert max(abs(a - b) for a, b in zip(vectors[0], expected, strict=True)) < 1e-6


@pytest.mark.timeout(900)
async def test_rest_embedding_refusals(embed_client: openai.AsyncOpenAI) -> None:
    client = embed_client
    with pytest.raises(openai.BadRequestError) as not_matryoshka:
        await client.embeddings.create(model="minilm", input="hi", dimensions=64)
    assert not_matryoshka.value.param == "dimensions"
    assert "Matryoshka" in not_matryoshka.value.message  # vLLM's own reason
    with pytest.raises(openai.BadRequestError) as chat_on_embedder:
        await client.chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "hi"}]
        )
    assert chat_on_embedder.value.code == "model_not_supported"
    assert (await client.models.retrieve("minilm")).id == MINILM


@pytest.mark.timeout(900)
async def test_grpc_embeddings_text_and_tokens(embedder: E2EStack) -> None:
    async with grpc.aio.insecure_channel(embedder.grpc) as channel:
        await _grpc_embeddings(embeddings_pb2_grpc.EmbeddingServiceStub(channel))


async def _grpc_embeddings(stub: embeddings_pb2_grpc.EmbeddingServiceStub) -> None:
    answer = await stub.CreateEmbedding(
        embeddings_pb2.CreateEmbeddingRequest(
            model=MINILM,
            inputs=[
                embeddings_pb2.EmbeddingInput(text="hello world"),
                # BERT's [CLS] hello world [SEP]: the same text as token ids.
                embeddings_pb2.EmbeddingInput(
                    tokens=embeddings_pb2.TokenIds(ids=[101, 7592, 2088, 102])
                ),
            ],
        )
    )
    first, second = (list(e.values) for e in answer.embeddings)
    assert len(first) == len(second) == DIMENSIONS
    assert cosine(first, second) > 0.99
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEmbedding(
            embeddings_pb2.CreateEmbeddingRequest(
                model=MINILM, inputs=[embeddings_pb2.EmbeddingInput(text="word " * 400)]
            )
        )
    parsed = parse_status(caught.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parsed.field_violations] == ["input"]
