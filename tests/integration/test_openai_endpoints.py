"""GET /v1/models/{id}, POST /v1/completions and POST /v1/embeddings over real HTTP
with the official openai SDK (sync and async), every answer checked against the
OpenAI OpenAPI spec; and the same RPCs through the generated gRPC stubs."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import orjson
import pytest

from backends.engines.sim import SimConfig, SimEngine, embed_text
from backends.server import start_sidecar
from common.grpcutil.status import parse_status
from llmgw.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    completions_pb2,
    completions_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
)
from tests.compat.openapi import assert_valid, assert_valid_against, completion_chunk_schema
from tests.conftest import (
    ANY_KEY,
    Deployment,
    Shim,
    deploy,
    deploy_with_embedder,
    start_shim,
    wait_until,
)

PROMPT = "alpha beta gamma delta"
EMBED_DIMS = 48


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    """A generating model (sim-small, alias small) and an embedding model (sim-embed)."""
    d, embedder = await deploy_with_embedder({"sim-small": SimConfig(output_tokens=20)}, EMBED_DIMS)
    yield d
    await d.stop(embedder)


def sync_client(shim: Shim) -> openai.OpenAI:
    return openai.OpenAI(base_url=shim.base_url + "/v1", api_key="sk-test", max_retries=0)


# --- models.retrieve -------------------------------------------------------------------


async def test_sdk_retrieves_a_model_by_name_and_alias(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    model = await client.models.retrieve("sim-small")
    assert (model.id, model.object, model.owned_by) == ("sim-small", "model", "llmgw")
    assert (await client.models.retrieve("embed")).id == "sim-embed"
    listed = {m.id: m.created async for m in client.models.list()}
    assert listed["sim-small"] == model.created
    response = await http.get("/v1/models/small")
    assert response.status_code == 200
    assert_valid("Model", response.json())


async def test_unknown_model_is_an_openai_404(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    response = await http.get("/v1/models/org/no-such-model")  # slashes are part of an id
    assert response.status_code == 404
    assert_valid("ErrorResponse", response.json())
    assert "'org/no-such-model' does not exist" in response.json()["error"]["message"]


async def test_sync_sdk_retrieves_completes_and_embeds(shim: Shim) -> None:
    def run() -> None:
        with sync_client(shim) as client:
            assert client.models.retrieve("small").id == "sim-small"
            done = client.completions.create(model="small", prompt=PROMPT, max_tokens=3)
            assert len(done.choices[0].text.split()) == 3
            chunks = list(client.completions.create(model="small", prompt=PROMPT, stream=True))
            assert "".join(c.choices[0].text for c in chunks if c.choices)
            vectors = client.embeddings.create(model="embed", input="hello world")
            assert len(vectors.data[0].embedding) == EMBED_DIMS

    await asyncio.to_thread(run)


# --- completions ---------------------------------------------------------------------


async def test_sdk_completion_whole(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    done = await client.completions.create(model="small", prompt=PROMPT, max_tokens=4)
    assert done.object == "text_completion"
    assert done.id.startswith("cmpl-") and done.model == "sim-small"
    [choice] = done.choices
    assert choice.index == 0 and choice.finish_reason == "length"
    words = choice.text.split()
    assert len(words) == 4 and set(words) <= set(PROMPT.split())
    assert choice.text.startswith(" ")  # the prompt is continued, not answered
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert done.usage.total_tokens == done.usage.prompt_tokens + 4 and done.usage.prompt_tokens > 0
    response = await http.post(
        "/v1/completions",
        json={"model": "small", "prompt": PROMPT, "max_tokens": 4},
        headers={"x-request-id": "client-chosen-1"},
    )
    assert response.headers["x-request-id"] == "client-chosen-1"  # the client's id, echoed
    assert response.headers["x-llmgw-model"] == "sim-small"
    assert_valid("CreateCompletionResponse", response.json())
    assert response.json()["choices"][0]["text"] == choice.text  # deterministic


async def test_completion_default_max_tokens_is_openais_16(client: openai.AsyncOpenAI) -> None:
    default = await client.completions.create(model="small", prompt=PROMPT)
    assert default.usage is not None and default.usage.completion_tokens == 16
    assert default.choices[0].finish_reason == "length"
    longer = await client.completions.create(model="small", prompt=PROMPT, max_tokens=100)
    assert longer.usage is not None and longer.usage.completion_tokens == 20  # natural end
    assert longer.choices[0].finish_reason == "stop"


async def test_sdk_completion_stream_with_usage(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    stream = await client.completions.create(
        model="small",
        prompt=PROMPT,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    whole = await client.completions.create(model="small", prompt=PROMPT, max_tokens=6)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")

    body = {"model": "small", "prompt": PROMPT, "max_tokens": 3, "stream": True}
    for options in (None, {"include_usage": True}):
        async with http.stream(
            "POST", "/v1/completions", json={**body, "stream_options": options}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-request-id"].startswith("req_")
            raw = b"".join([part async for part in response.aiter_bytes()])
        events = raw.split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        for event in events[:-2]:
            assert event.startswith(b"data: {")
            assert_valid_against(
                "completion chunk", completion_chunk_schema(), orjson.loads(event[6:])
            )


async def test_echo_puts_the_prompt_first(client: openai.AsyncOpenAI) -> None:
    plain = await client.completions.create(model="small", prompt=PROMPT, max_tokens=3)
    echoed = await client.completions.create(model="small", prompt=PROMPT, max_tokens=3, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    stream = await client.completions.create(
        model="small", prompt=PROMPT, max_tokens=3, echo=True, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == echoed.choices[0].text


async def test_prompt_lists_and_n_give_indexed_choices(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    prompts = ["one two three", "four five six"]
    done = await client.completions.create(model="small", prompt=prompts, n=2, max_tokens=3, seed=7)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    for choice in done.choices:
        assert set(choice.text.split()) <= set(prompts[choice.index // 2].split())
    assert done.choices[0].text != done.choices[1].text  # seed + j: the choices differ
    single = await client.completions.create(model="small", prompt=prompts[0], max_tokens=3)
    assert done.usage is not None and single.usage is not None
    assert done.usage.completion_tokens == 12
    # Each prompt's tokens count once, however many choices it has.
    assert single.usage.prompt_tokens < done.usage.prompt_tokens < 3 * single.usage.prompt_tokens

    stream = await client.completions.create(
        model="small", prompt=prompts, n=2, max_tokens=3, seed=7, stream=True
    )
    texts = ["", "", "", ""]
    ends: dict[int, str] = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason is not None:
                ends[c.index] = c.finish_reason
    assert texts == [c.text for c in done.choices]
    assert ends == {0: "length", 1: "length", 2: "length", 3: "length"}


async def test_logprobs_whole_and_streamed(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    done = await client.completions.create(model="small", prompt=PROMPT, max_tokens=5, logprobs=2)
    [choice] = done.choices
    plain = await client.completions.create(model="small", prompt=PROMPT, max_tokens=5)
    assert choice.text == plain.choices[0].text  # asking for logprobs changes no text
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert lp.token_logprobs is not None and all(v <= 0 for v in lp.token_logprobs)
    assert lp.top_logprobs is not None and all(len(top) == 2 for top in lp.top_logprobs)
    response = await http.post(
        "/v1/completions", json={"model": "small", "prompt": PROMPT, "max_tokens": 5, "logprobs": 0}
    )
    assert_valid("CreateCompletionResponse", response.json())
    assert all(top == {} for top in response.json()["choices"][0]["logprobs"]["top_logprobs"])

    body = {"model": "small", "prompt": PROMPT, "max_tokens": 5, "logprobs": 2, "stream": True}
    async with http.stream("POST", "/v1/completions", json=body) as streamed:
        raw = b"".join([part async for part in streamed.aiter_bytes()])
    chunks = [orjson.loads(e[6:]) for e in raw.split(b"\n\n")[:-2]]
    for chunk in chunks:
        assert_valid_against("completion chunk", completion_chunk_schema(), chunk)
    texts = [c["choices"][0] for c in chunks if c["choices"][0]["logprobs"] is not None]
    assert "".join(c["text"] for c in texts) == choice.text
    assert [o for c in texts for o in c["logprobs"]["text_offset"]] == lp.text_offset
    assert [v for c in texts for v in c["logprobs"]["token_logprobs"]] == lp.token_logprobs


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"suffix": "the end"}, "suffix", "unsupported_parameter"),
        ({"logprobs": 6}, "logprobs", None),
        ({"logprobs": 1, "echo": True}, "echo", "unsupported_parameter"),
        ({"prompt": [1, 2, 3]}, "prompt", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "unsupported_parameter"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"prompt": []}, "prompt", None),
        ({"prompt": ""}, "prompt", None),
        ({"n": 0}, "n", None),
        ({"temperature": 3}, "temperature", None),
        ({"max_tokens": 0}, "max_tokens", None),
        ({"model": "embed"}, "model", "model_not_supported"),
        ({"stream_options": {"include_usage": True}}, "stream_options", None),
        ({"messages": []}, "messages", None),
    ],
)
async def test_completion_refusals_are_openai_400s(
    http: httpx.AsyncClient, extra: dict[str, object], param: str, code: str | None
) -> None:
    response = await http.post("/v1/completions", json={"model": "small", "prompt": "x", **extra})
    assert response.status_code == 400, response.text
    assert_valid("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


async def test_unknown_model_completion_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.completions.create(model="nope", prompt=PROMPT)
    assert caught.value.code == "model_not_found"


# --- embeddings ----------------------------------------------------------------------


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


async def test_sdk_embeddings_float(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    texts = ["the cat sat on the mat", "the cat sat on the mat", "a cat sat", "stock prices fell"]
    answer = await client.embeddings.create(model="embed", input=texts, encoding_format="float")
    assert answer.model == "sim-embed" and answer.object == "list"
    vectors = [d.embedding for d in answer.data]
    assert [d.index for d in answer.data] == [0, 1, 2, 3]
    assert all(len(v) == EMBED_DIMS and abs(norm(v) - 1) < 1e-5 for v in vectors)
    assert vectors[0] == vectors[1]  # deterministic
    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[3])  # shared words
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    # The sim's vector, through float32 on the wire.
    expected = embed_text(texts[3], EMBED_DIMS)
    assert max(abs(a - b) for a, b in zip(vectors[3], expected, strict=True)) < 1e-6

    response = await http.post("/v1/embeddings", json={"model": "embed", "input": "hi"})
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert_valid("CreateEmbeddingResponse", response.json())


async def test_sdk_embeddings_base64_match_float(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    texts = ["first text", "second text"]
    floats = await client.embeddings.create(model="embed", input=texts, encoding_format="float")
    # The SDK asks for base64 when no format is given, and decodes it itself.
    decoded = await client.embeddings.create(model="embed", input=texts)
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]
    raw = await http.post(
        "/v1/embeddings", json={"model": "embed", "input": texts, "encoding_format": "base64"}
    )
    body = raw.json()
    assert all(isinstance(d["embedding"], str) for d in body["data"])
    # The spec types the vector as an array; base64 replaces it with a string.
    for item in body["data"]:
        item["embedding"] = [0.0]
    assert_valid("CreateEmbeddingResponse", body)


async def test_embeddings_dimensions_and_token_inputs(client: openai.AsyncOpenAI) -> None:
    short = await client.embeddings.create(
        model="embed", input="hello there", dimensions=16, encoding_format="float"
    )
    vector = short.data[0].embedding
    assert len(vector) == 16 and abs(norm(vector) - 1) < 1e-5
    tokens = await client.embeddings.create(
        model="embed", input=[[1, 2, 3], [1, 2, 3], [4]], encoding_format="float"
    )
    assert tokens.data[0].embedding == tokens.data[1].embedding != tokens.data[2].embedding
    assert tokens.usage.prompt_tokens == 7
    one = await client.embeddings.create(model="embed", input=[5, 6], encoding_format="float")
    assert len(one.data) == 1 and one.usage.prompt_tokens == 2


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"model": "small"}, "model", "model_not_supported"),
        ({"input": ""}, "input[0]", None),
        ({"input": []}, "input", None),
        ({"dimensions": 0}, "dimensions", None),
        ({"dimensions": EMBED_DIMS + 1}, "dimensions", None),
        ({"encoding_format": "int8"}, "encoding_format", "invalid_type"),
        ({"input": [-1]}, "input[0]", None),
        ({"temperature": 1}, "temperature", None),
    ],
)
async def test_embedding_refusals_are_openai_400s(
    http: httpx.AsyncClient, extra: dict[str, object], param: str, code: str | None
) -> None:
    response = await http.post("/v1/embeddings", json={"model": "embed", "input": "x", **extra})
    assert response.status_code == 400, response.text
    assert_valid("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


async def test_chat_refuses_an_embedding_model(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="embed", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_supported"
    assert "embedding model" in str(caught.value.message)


# --- gRPC ----------------------------------------------------------------------------


async def test_grpc_get_model(deployment: Deployment) -> None:
    models = chat_pb2_grpc.ModelServiceStub(deployment.channel)
    answer = await models.GetModel(chat_pb2.GetModelRequest(model="embed"))
    assert answer.model.id == "sim-embed" and answer.model.kind == chat_pb2.MODEL_KIND_EMBEDDING
    assert list(answer.model.aliases) == ["embed"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.GetModel(chat_pb2.GetModelRequest(model="nope"))
    parsed = parse_status(caught.value)
    assert (parsed.code, parsed.reason) == (grpc.StatusCode.NOT_FOUND, "model_not_found")


async def test_grpc_completions_unary_and_stream(deployment: Deployment) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(deployment.channel)
    params = completions_pb2.CompletionParams(model="small", prompts=[PROMPT], max_tokens=5)
    whole = await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(params=params))
    assert whole.id.startswith("cmpl-") and len(whole.choices) == 1
    assert whole.choices[0].finish_reason == chat_pb2.FINISH_REASON_LENGTH
    call = stub.StreamCompletion(
        completions_pb2.StreamCompletionRequest(params=params, include_usage=True)
    )
    events = [m async for m in call]
    kinds = [m.WhichOneof("event") for m in events]
    assert kinds[0] == "start" and kinds[-2:] == ["choice_end", "end"]
    assert set(kinds[1:-2]) == {"delta"}
    assert "".join(m.delta.text for m in events if m.HasField("delta")) == whole.choices[0].text
    assert events[-1].end.usage.completion_tokens == 5
    assert dict(await call.initial_metadata())["x-llmgw-model"] == "sim-small"


async def test_grpc_completion_refusals_name_every_field(deployment: Deployment) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(deployment.channel)
    params = completions_pb2.CompletionParams(model="small", suffix="end", logprobs=9)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(params=params))
    parsed = parse_status(caught.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parsed.field_violations] == ["suffix", "logprobs", "prompt"]


async def test_grpc_embeddings(deployment: Deployment) -> None:
    stub = embeddings_pb2_grpc.EmbeddingServiceStub(deployment.channel)
    request = embeddings_pb2.CreateEmbeddingRequest(
        model="sim-embed",
        inputs=[
            embeddings_pb2.EmbeddingInput(text="hello"),
            embeddings_pb2.EmbeddingInput(tokens=embeddings_pb2.TokenIds(ids=[1, 2])),
        ],
        dimensions=8,
    )
    answer = await stub.CreateEmbedding(request)
    assert [len(e.values) for e in answer.embeddings] == [8, 8]
    assert [e.index for e in answer.embeddings] == [0, 1]
    assert answer.id.startswith("embd-") and answer.model == "sim-embed"
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 4
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEmbedding(embeddings_pb2.CreateEmbeddingRequest(model="small"))
    parsed = parse_status(caught.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in parsed.field_violations} == {"input"}


async def test_leaving_an_embeddings_call_stops_the_engine() -> None:
    """A REST client that disconnects (and a gRPC client that cancels) mid-embedding
    ends the backend's work, as for chat and completions."""
    engine = SimEngine(SimConfig(embedding_dimensions=8, ttft_ms=120_000))  # never answers in time
    embedder = await start_sidecar(engine)
    d = await deploy(
        {"sim-small": SimConfig()},
        extra=[
            {
                "name": "sim-embed",
                "aliases": ["embed"],
                "kind": "embedding",
                "endpoints": [f"127.0.0.1:{embedder.port}"],
            }
        ],
    )
    shim, task = await start_shim(d.address)
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            body = {"model": "embed", "input": "hello"}
            pending = asyncio.create_task(http.post("/v1/embeddings", json=body))
            await wait_until(lambda: engine.active == 1)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
        await wait_until(lambda: engine.active == 0, timeout=10)

        stub = embeddings_pb2_grpc.EmbeddingServiceStub(d.channel)
        call = stub.CreateEmbedding(
            embeddings_pb2.CreateEmbeddingRequest(
                model="embed", inputs=[embeddings_pb2.EmbeddingInput(text="hi")]
            )
        )
        await wait_until(lambda: engine.active == 1)
        call.cancel()
        await wait_until(lambda: engine.active == 0, timeout=10)
    finally:
        shim.server.should_exit = True
        await task
        await d.stop(embedder)
