"""Tools, structured outputs, log probabilities and n on real vLLM, over REST
(the OpenAI SDK through the shim) and gRPC: vLLM's guided decoding makes a
named strict tool call and a json_schema answer valid even on a 135M model.

What OpenAI promises, and vLLM 0.32 keeps: a named ``tool_choice`` always
calls that function; its arguments follow the schema when the function is
``strict`` (without it vLLM only constrains the call's envelope, and SmolLM2
answered ``"Paris"`` for an object). vLLM wraps a call in Hermes' envelope
(``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, the stack's
``--tool-call-parser``), which costs SmolLM2 about 60 tokens, hence the
budget. Greedy decoding keeps the answers' lengths fixed: sampled, the
grammar still holds but the model may spend its budget on whitespace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jsonschema
import openai
import pytest
from google.protobuf import json_format

from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.e2e.conftest import E2EStack
from tests.e2e.probe import SMOLLM

ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": CITY,
        "strict": True,
    },
}
# Hermes' envelope around {"city": "Paris"} took SmolLM2 58 tokens.
TOOL_TOKENS = 120
MOOD = {
    "type": "object",
    "properties": {
        "mood": {"type": "string", "enum": ["happy", "sad", "calm"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["mood", "count"],
    "additionalProperties": False,
}


@pytest.fixture
async def client(e2e: E2EStack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=e2e.rest + "/v1", api_key="e2e-unused-key", max_retries=0, timeout=300
    ) as c:
        yield c


@pytest.fixture
async def chat(e2e: E2EStack) -> AsyncIterator[pb_grpc.ChatServiceStub]:
    async with grpc.aio.insecure_channel(e2e.grpc) as channel:
        yield pb_grpc.ChatServiceStub(channel)


async def test_rest_named_tool_call_is_valid(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=SMOLLM,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=TOOL_TOKENS,
        temperature=0,
    )
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), CITY)  # type: ignore[union-attr]

    # Streamed: vLLM sends the call's id and name first, then the arguments in
    # fragments; joined by index they are the same call.
    chunks = await client.chat.completions.create(
        model=SMOLLM,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=TOOL_TOKENS,
        temperature=0,
        stream=True,
    )
    fragments = [f async for c in chunks if c.choices for f in c.choices[0].delta.tool_calls or ()]
    assert fragments and {f.index for f in fragments} == {0}
    assert [f.function.name for f in fragments if f.function and f.function.name] == ["get_weather"]
    assert fragments[0].id, "the first fragment of a call carries its id"
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments) == json.loads(call.function.arguments)  # type: ignore[union-attr]


async def test_rest_json_schema_answer_parses_and_validates(client: openai.AsyncOpenAI) -> None:
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "mood", "schema": MOOD, "strict": True},
    }
    for stream in (False, True):
        if stream:
            chunks = await client.chat.completions.create(
                model=SMOLLM,
                messages=ASK,
                response_format=fmt,
                max_tokens=40,
                temperature=0,
                stream=True,  # type: ignore[arg-type]
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            reply = await client.chat.completions.create(
                model=SMOLLM,
                messages=ASK,
                response_format=fmt,
                max_tokens=40,
                temperature=0,  # type: ignore[arg-type]
            )
            text = reply.choices[0].message.content or ""
        jsonschema.validate(json.loads(text), MOOD)


async def test_rest_logprobs_and_two_choices(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=SMOLLM,
        messages=ASK,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        n=2,
        seed=1,  # type: ignore[arg-type]
    )
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert reply.usage is not None and reply.usage.completion_tokens >= 2


def _struct(value: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


async def test_grpc_named_tool_json_schema_logprobs_and_n(chat: pb_grpc.ChatServiceStub) -> None:
    base = {
        "model": SMOLLM,
        "messages": [pb.ChatMessage(role=pb.ROLE_USER, content=ASK[0]["content"])],
    }
    tool = pb.ChatCompletionParams(**base, max_tokens=TOOL_TOKENS, temperature=0)  # type: ignore[arg-type]
    tool.tools.add(type="function").function.MergeFrom(
        json_format.ParseDict(
            {"name": "get_weather", "parameters": CITY, "strict": True},
            type(tool.tools[0].function)(),
        )
    )
    tool.tool_choice.function_name = "get_weather"
    reply = await chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=tool), timeout=300
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), CITY)

    schema = pb.ChatCompletionParams(**base, max_tokens=40, temperature=0)  # type: ignore[arg-type]
    schema.response_format.type = 3  # RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    schema.response_format.json_schema.name = "mood"
    schema.response_format.json_schema.schema.CopyFrom(_struct(MOOD))
    events = [
        e
        async for e in chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=schema), timeout=300
        )
    ]
    text = "".join(e.delta.content for e in events if e.HasField("delta"))
    text += "".join(e.choice_delta.content for e in events if e.HasField("choice_delta"))
    jsonschema.validate(json.loads(text), MOOD)

    probs = pb.ChatCompletionParams(**base, max_tokens=4, n=2, logprobs=True, top_logprobs=2)  # type: ignore[arg-type]
    reply = await chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=probs), timeout=300
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.logprobs and len(c.logprobs[0].top_logprobs) == 2 for c in reply.choices)
