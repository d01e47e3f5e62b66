"""The OpenAI REST shim over real HTTP, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest

from backends.engines.sim import FailureMode, SimConfig
from tests.conftest import ANY_KEY, Deployment, Shim, deploy, start_shim, wait_until

HELLO = [{"role": "user", "content": "hello gateway world"}]


async def test_sdk_non_streaming_completion(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="small", messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
    assert reply.object == "chat.completion"
    assert reply.model == "sim-small"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert len((choice.message.content or "").split()) == 4
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


async def test_sdk_streaming_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="sim-large",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 20
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    reply = await client.chat.completions.create(model="sim-large", messages=HELLO)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == text


async def test_sse_bytes_are_openai_framed(http: httpx.AsyncClient) -> None:
    body = {"model": "small", "messages": HELLO, "stream": True, "max_tokens": 2}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")
        raw = b"".join([part async for part in response.aiter_bytes()])
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    payloads = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all(e.startswith(b"data: {") for e in events[:-2])
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads[1:])
    assert len(text.split()) == 2
    assert payloads[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert "usage" not in payloads[0]


async def test_sdk_lists_models(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["sim-small", "sim-large"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 200}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_completion_tokens": 100_000}, "max_completion_tokens"),
        ({"temperature": 9}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"extra_body": {"request_id": "mine"}}, "request_id"),
        ({"extra_body": {"blob": "x" * 20000}}, "engine_extras"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ],
)
async def test_sdk_bad_requests_raise_bad_request_error(
    client: openai.AsyncOpenAI, kwargs: dict[str, object], param: str
) -> None:
    call = {"model": "small", "messages": HELLO, **kwargs}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(**call, stream=stream)  # type: ignore[call-overload]
        assert caught.value.status_code == 400
        assert caught.value.param == param
        assert caught.value.type == "invalid_request_error"


async def test_sdk_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-99", messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    assert "gpt-99" in caught.value.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "could not parse the JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"messages": []}', "Missing required parameter: 'model'"),
        (
            b'{"model": "small", "messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]}',
            "image_url",
        ),
        (
            b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}',
            "stream_options",
        ),
    ],
)
async def test_malformed_bodies_are_openai_400s(
    http: httpx.AsyncClient, content: bytes, fragment: str
) -> None:
    response = await http.post("/v1/chat/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert "Traceback" not in response.text


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    big = {"model": "small", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = await http.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit holds while reading
        for _ in range(100):
            yield b" " * 1024

    response = await http.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413


async def test_unknown_route_and_method_are_openai_errors(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/engines")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    response = await http.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).status_code == 200


async def test_readyz_fails_when_the_gateway_is_down() -> None:
    shim, task = await start_shim("127.0.0.1:1")
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            assert (await http.get("/healthz")).status_code == 200
            response = await http.get("/readyz")
            assert response.status_code == 503
            response = await http.post(
                "/v1/chat/completions", json={"model": "small", "messages": HELLO}
            )
            assert response.status_code == 503
            assert response.json()["error"]["type"] == "service_unavailable_error"
            assert "127.0.0.1:1" not in response.text  # no transport internals leak
    finally:
        shim.server.should_exit = True
        await task


async def _failing_deployment(sim: SimConfig) -> tuple[Deployment, Shim, asyncio.Task[None]]:
    d = await deploy({"sim-small": sim})
    shim, task = await start_shim(d.address)
    return d, shim, task


async def _teardown(d: Deployment, shim: Shim, task: asyncio.Task[None]) -> None:
    shim.server.should_exit = True
    await task
    await d.gateway.stop(0)
    await d.sidecars[0].stop(0)


async def test_failure_mid_stream_raises_in_the_sdk_and_sends_no_done() -> None:
    d, shim, task = await _failing_deployment(
        SimConfig(failure_mode=FailureMode.ERROR_AFTER_TOKENS, failure_after_tokens=3)
    )
    try:
        async with openai.AsyncOpenAI(
            base_url=shim.base_url + "/v1", api_key="x", max_retries=0
        ) as c:
            stream = await c.chat.completions.create(model="small", messages=HELLO, stream=True)  # type: ignore[arg-type]
            seen = []
            with pytest.raises(openai.APIError) as caught:
                async for chunk in stream:
                    seen.append(chunk)
            text = "".join(c.choices[0].delta.content or "" for c in seen)
            assert len(text.split()) == 3  # the tokens before the failure, then the error
            assert "failed" in caught.value.message
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            body = {"model": "small", "messages": HELLO, "stream": True}
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert b"[DONE]" not in response.content
            last = response.content.strip().split(b"\n\n")[-1]
            assert orjson.loads(last.removeprefix(b"data: "))["error"]["type"] == "server_error"
    finally:
        await _teardown(d, shim, task)


async def test_failure_before_first_token_is_an_http_error() -> None:
    d, shim, task = await _failing_deployment(SimConfig(failure_mode=FailureMode.ERROR_AT_START))
    try:
        async with openai.AsyncOpenAI(
            base_url=shim.base_url + "/v1", api_key="x", max_retries=0
        ) as c:
            with pytest.raises(openai.InternalServerError) as caught:
                await c.chat.completions.create(model="small", messages=HELLO, stream=True)  # type: ignore[arg-type]
            assert caught.value.status_code == 500
    finally:
        await _teardown(d, shim, task)


async def test_client_disconnect_mid_stream_reaches_the_engine() -> None:
    d, shim, task = await _failing_deployment(
        SimConfig(itl_ms=20, output_tokens=10_000, max_context_tokens=100_000)
    )
    engine = d.engines["sim-small"]
    try:
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            body = {"model": "small", "messages": HELLO, "stream": True, "max_tokens": 1000}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()
                while not (await anext(lines)).startswith('data: {"id"'):
                    pass
                assert engine.active == 1
            # Leaving the block closes the connection mid-stream.
        # Far sooner than the answer would take: the engine was aborted.
        took = await wait_until(lambda: engine.active == 0, timeout=10)
        print(f"cancel reached the engine in {took * 1000:.1f} ms")
        assert engine.aborted == 1
    finally:
        await _teardown(d, shim, task)


async def test_client_disconnect_before_first_token_reaches_the_engine() -> None:
    d, shim, task = await _failing_deployment(SimConfig(failure_mode=FailureMode.HANG))
    engine = d.engines["sim-small"]
    try:
        for stream in (True, False):
            async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
                body = {"model": "small", "messages": HELLO, "stream": stream}
                pending = asyncio.create_task(http.post("/v1/chat/completions", json=body))
                await wait_until(lambda: engine.active == 1)
                pending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pending
            await wait_until(lambda: engine.active == 0)  # it hangs: only an abort ends it
        assert engine.aborted == 2
    finally:
        await _teardown(d, shim, task)
