"""Compatibility tier for completions, embeddings and model retrieval: every body,
stream chunk and error across a matrix of features validates against the official
OpenAI OpenAPI spec, and each answer means what was asked."""

from __future__ import annotations

import base64
from array import array
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from tests.compat.openapi import assert_valid, assert_valid_against, completion_chunk_schema
from tests.conftest import deploy, start_shim

PROMPT = "one two three four five"
COMPLETION_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "max_tokens": {"max_tokens": 3},
    "temperature_top_p_seed": {"temperature": 0.7, "top_p": 0.9, "seed": 3},
    "stop": {"stop": ["three"]},
    "echo": {"echo": True, "max_tokens": 2},
    "n": {"n": 3, "max_tokens": 2},
    "prompt_list": {"prompt": ["a b c", "d e f"], "max_tokens": 2},
    "logprobs": {"logprobs": 3, "max_tokens": 4},
    "logprobs_zero_n": {"logprobs": 0, "n": 2, "max_tokens": 2},
    "penalties_user": {"presence_penalty": 0.5, "frequency_penalty": 0.5, "user": "u1"},
    "best_of_equal_n": {"best_of": 2, "n": 2, "max_tokens": 2},
}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    embedder = await start_sidecar(SimEngine(SimConfig(embedding_dimensions=32)))
    d = await deploy(
        {"sim-small": SimConfig(output_tokens=8)},
        extra=[
            {
                "name": "sim-embed",
                "kind": "embedding",
                "endpoints": [f"127.0.0.1:{embedder.port}"],
            }
        ],
    )
    shim, task = await start_shim(d.address)
    async with httpx.AsyncClient(
        base_url=shim.base_url, timeout=30, headers={"authorization": "Bearer sk-compat-0123"}
    ) as client:
        yield client
    shim.server.should_exit = True
    await task
    await d.channel.close()
    await d.gateway.stop(0)
    for s in (*d.sidecars, embedder):
        await s.stop(0)


def expected_choices(case: dict[str, Any]) -> int:
    prompts = case.get("prompt", PROMPT)
    return (len(prompts) if isinstance(prompts, list) else 1) * case.get("n", 1)


@pytest.mark.parametrize("case", COMPLETION_CASES)
async def test_whole_completion_conforms(http: httpx.AsyncClient, case: str) -> None:
    extra = COMPLETION_CASES[case]
    response = await http.post(
        "/v1/completions", json={"model": "sim-small", "prompt": PROMPT, **extra}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == list(range(expected_choices(extra)))
    for choice in body["choices"]:
        assert (choice["logprobs"] is not None) == ("logprobs" in extra)
        if extra.get("echo"):
            assert choice["text"].startswith(PROMPT)


@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("case", COMPLETION_CASES)
async def test_stream_chunks_conform_and_assemble(
    http: httpx.AsyncClient, case: str, usage: bool
) -> None:
    extra = COMPLETION_CASES[case]
    body = {"model": "sim-small", "prompt": PROMPT, **extra, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        raw = b"".join([part async for part in response.aiter_bytes()])
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    schema = completion_chunk_schema()
    for chunk in chunks:
        assert_valid_against("completion chunk", schema, chunk)
        assert ("usage" in chunk) == usage
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    whole = (
        await http.post("/v1/completions", json={"model": "sim-small", "prompt": PROMPT, **extra})
    ).json()
    if "temperature" not in extra:  # the sim is deterministic either way; greedy reads plainer
        assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    if usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "sim-small", "prompt": PROMPT, "suffix": "x"}, 400),
        ({"model": "sim-small", "prompt": PROMPT, "logprobs": 9}, 400),
        ({"model": "sim-small", "prompt": PROMPT, "frobnicate": 1}, 400),
        ({"model": "sim-small"}, 400),
        ({"model": "sim-embed", "prompt": PROMPT}, 400),
        ({"model": "nope", "prompt": PROMPT}, 404),
        ({"model": "sim-small", "prompt": PROMPT, "stream": True, "n": 0}, 400),
    ],
)
async def test_completion_errors_conform(
    http: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == status
    assert_valid("ErrorResponse", response.json())
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    "payload",
    [
        {"input": "one text"},
        {"input": ["a", "b", "c"]},
        {"input": [1, 2, 3]},
        {"input": [[1, 2], [3]]},
        {"input": ["a b"], "dimensions": 8},
        {"input": ["a b"], "user": "u1"},
    ],
)
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings_conform(
    http: httpx.AsyncClient, payload: dict[str, Any], encoding: str
) -> None:
    response = await http.post(
        "/v1/embeddings", json={"model": "sim-embed", **payload, "encoding_format": encoding}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    size = payload.get("dimensions", 32)
    for item in body["data"]:
        if encoding == "base64":
            assert isinstance(item["embedding"], str)
            item["embedding"] = array("f", base64.b64decode(item["embedding"])).tolist()
        assert len(item["embedding"]) == size
    # The spec types the vector as numbers; base64 is checked decoded.
    assert_valid("CreateEmbeddingResponse", body)


@pytest.mark.parametrize(
    "payload",
    [{"input": ""}, {"input": []}, {"input": "x", "dimensions": 0}, {"model": "sim-small"}],
)
async def test_embedding_errors_conform(http: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    response = await http.post(
        "/v1/embeddings", json={"model": "sim-embed", "input": "x", **payload}
    )
    assert response.status_code == 400
    assert_valid("ErrorResponse", response.json())


async def test_models_retrieve_and_list_conform(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/v1/models")).json()
    assert_valid("ListModelsResponse", listed)
    for model in listed["data"]:
        one = await http.get(f"/v1/models/{model['id']}")
        assert one.status_code == 200
        assert_valid("Model", one.json())
        assert one.json() == model
    missing = await http.get("/v1/models/nope")
    assert missing.status_code == 404
    assert_valid("ErrorResponse", missing.json())
