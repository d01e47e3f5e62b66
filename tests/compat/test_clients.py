"""Client libraries used unchanged against the real stack (sidecars on the sim
engine, the gateway and the shim, on free ports): the official openai SDK
(sync and async), langchain-openai and litellm, for tools (streamed and not),
structured outputs, log probabilities and n=2.

Sync clients run in a thread: the servers share this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.compat.test_chat_openapi import PERSON, USER, WEATHER
from tests.conftest import Deployment, Shim

KEY = "sk-clients-0123456789"


@pytest.fixture
def base_url(compat_stack: tuple[Deployment, Shim]) -> str:
    return compat_stack[1].base_url + "/v1"


# --- the official openai SDK -------------------------------------------------------


async def test_openai_async_tools_stream_and_whole(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        whole = await client.chat.completions.create(
            model="small",
            messages=USER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
        )
        call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert whole.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[attr-defined, index]
        assert whole._request_id  # x-request-id, as the SDK reads it
        stream = await client.chat.completions.create(
            model="small",
            messages=USER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            stream=True,
        )
        arguments = ""
        names = []
        async for chunk in stream:
            if not chunk.choices:
                continue
            for fragment in chunk.choices[0].delta.tool_calls or ():
                assert fragment.function is not None
                if fragment.function.name:
                    names.append(fragment.function.name)
                arguments += fragment.function.arguments or ""
        assert names == ["get_weather"]
        assert arguments == call.function.arguments  # type: ignore[attr-defined]


async def test_openai_sync_in_a_thread(base_url: str) -> None:
    def run() -> None:
        with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
            parsed = client.chat.completions.create(
                model="small",
                messages=USER,  # type: ignore[arg-type]
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "person", "strict": True, "schema": PERSON},
                },
            )
            jsonschema.validate(json.loads(parsed.choices[0].message.content or ""), PERSON)
            probs = client.chat.completions.create(
                model="small",
                messages=USER,  # type: ignore[arg-type]
                logprobs=True,
                top_logprobs=2,
                n=2,
            )
            assert [c.index for c in probs.choices] == [0, 1]
            for choice in probs.choices:
                assert choice.logprobs is not None and choice.logprobs.content
                tokens = "".join(t.token for t in choice.logprobs.content)
                assert tokens == choice.message.content
            streamed = client.chat.completions.create(
                model="small",
                messages=USER,  # type: ignore[arg-type]
                n=2,
                stream=True,
                extra_body={"top_k": 5, "repetition_penalty": 1.05},
            )
            texts = {0: "", 1: ""}
            for chunk in streamed:
                for choice in chunk.choices:
                    texts[choice.index] += choice.delta.content or ""
            assert texts[0] and texts[1] and texts[0] != texts[1]

    await asyncio.to_thread(run)


# --- langchain-openai ---------------------------------------------------------------


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Weather in a city."""
    return f"sunny in {city}"


class Person(BaseModel):
    """A person."""

    name: str
    age: int
    tags: list[str]


class Answer(BaseModel):
    """The answer JSON mode gives."""

    answer: str


def _chat(base_url: str, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=base_url, api_key=KEY, model="small", max_retries=0, **kw)  # type: ignore[arg-type]


async def test_langchain_invoke_stream_and_tools(base_url: str) -> None:
    def run() -> None:
        llm = _chat(base_url)
        reply = llm.invoke("alpha beta gamma")
        assert isinstance(reply, AIMessage) and reply.content
        chunks = list(llm.stream("alpha beta gamma"))
        assert "".join(str(c.content) for c in chunks) == reply.content
        with_tools = llm.bind_tools([get_weather])
        called = with_tools.invoke("weather in Paris?")
        assert called.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]
        assert isinstance(called.tool_calls[0]["args"]["city"], str)  # type: ignore[attr-defined]
        # Streamed tool calls aggregate into the same call.
        merged: Iterator[AIMessageChunk] = with_tools.stream("weather in Paris?")  # type: ignore[assignment]
        total = None
        for chunk in merged:
            total = chunk if total is None else total + chunk
        assert total is not None and total.tool_calls[0]["name"] == "get_weather"
        assert total.tool_calls[0]["args"] == called.tool_calls[0]["args"]  # type: ignore[attr-defined]
        # The agent loop ends: after the tool's result the model answers in text.
        answer = with_tools.invoke(
            [
                HumanMessage("weather in Paris?"),
                called,
                ToolMessage("sunny", tool_call_id=called.tool_calls[0]["id"]),  # type: ignore[attr-defined]
            ]
        )
        assert answer.content and not answer.tool_calls  # type: ignore[attr-defined]

    await asyncio.to_thread(run)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
async def test_langchain_structured_output_every_method(base_url: str, method: str) -> None:
    schema: type[BaseModel] = Answer if method == "json_mode" else Person

    def run() -> BaseModel:
        structured = _chat(base_url).with_structured_output(schema, method=method)  # type: ignore[arg-type]
        return structured.invoke("Return JSON please: alpha beta")  # type: ignore[return-value]

    result = await asyncio.to_thread(run)
    assert isinstance(result, schema)


async def test_langchain_async_logprobs_and_n(base_url: str) -> None:
    llm = _chat(base_url, logprobs=True, top_logprobs=2)
    reply = await llm.ainvoke("alpha beta")
    assert reply.response_metadata["logprobs"]["content"]
    two = await _chat(base_url, n=2).agenerate([[HumanMessage("alpha beta gamma")]])
    assert len(two.generations[0]) == 2


# --- litellm as a client library ----------------------------------------------------


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    # Its model price list ships inside the package: never fetched at import.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm as module

    return module


async def test_litellm_tools_structured_logprobs_and_n(base_url: str, litellm: Any) -> None:
    common = {"model": "openai/small", "api_base": base_url, "api_key": KEY, "num_retries": 0}
    reply = await litellm.acompletion(
        messages=USER, tools=[WEATHER], tool_choice="required", **common
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    stream = await litellm.acompletion(
        messages=USER, tools=[WEATHER], tool_choice="required", stream=True, **common
    )
    arguments = ""
    async for chunk in stream:
        for fragment in chunk.choices[0].delta.tool_calls or ():
            arguments += fragment.function.arguments or ""
    assert json.loads(arguments) == json.loads(call.function.arguments)
    structured = await litellm.acompletion(
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
        **common,
    )
    jsonschema.validate(json.loads(structured.choices[0].message.content), PERSON)
    probs = await litellm.acompletion(messages=USER, logprobs=True, top_logprobs=2, n=2, **common)
    assert len(probs.choices) == 2
    assert probs.choices[0].logprobs["content"][0]["top_logprobs"]
