"""Compatibility tier: every chat completion body, stream chunk and error the
shim emits, across a matrix of features, validates against the official
OpenAI OpenAPI specification; and each answer means what the feature says
(tool calls parse and name a given tool, structured output matches its
schema, log probabilities, n choices...)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from tests.compat.openapi import assert_valid

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "address": {"$ref": "#/$defs/address"},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "tags", "address", "nickname"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["street", "zip"],
            "additionalProperties": False,
        }
    },
}
USER = [{"role": "user", "content": "alpha beta gamma delta"}]
TOOL_TURN = [
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


def _tool_args(call: dict[str, Any]) -> Any:
    return json.loads(call["function"]["arguments"])


def check_plain(choices: list[dict[str, Any]]) -> None:
    assert choices[0]["message"]["content"]
    assert choices[0]["finish_reason"] == "stop"
    assert "tool_calls" not in choices[0]["message"]


def check_tool_call(name: str, finish: str) -> Any:
    def check(choices: list[dict[str, Any]]) -> None:
        for choice in choices:
            message = choice["message"]
            assert message["content"] is None
            assert [c["function"]["name"] for c in message["tool_calls"]] == [name]
            call = message["tool_calls"][0]
            assert call["id"].startswith("call_") and call["type"] == "function"
            schema = (WEATHER if name == "get_weather" else CLOCK)["function"]["parameters"]
            jsonschema.validate(_tool_args(call), schema)  # type: ignore[arg-type]
            assert choice["finish_reason"] == finish

    return check


def check_json_schema(choices: list[dict[str, Any]]) -> None:
    jsonschema.validate(json.loads(choices[0]["message"]["content"]), PERSON)


def check_json_object(choices: list[dict[str, Any]]) -> None:
    assert isinstance(json.loads(choices[0]["message"]["content"]), dict)


def check_logprobs(choices: list[dict[str, Any]]) -> None:
    content = choices[0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choices[0]["message"]["content"]
    for token in content:
        assert token["logprob"] <= 0
        assert bytes(token["bytes"]).decode() == token["token"]
        assert len(token["top_logprobs"]) == 3
        assert token["top_logprobs"][0]["token"] == token["token"]


def check_two_choices(choices: list[dict[str, Any]]) -> None:
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["message"]["content"] != choices[1]["message"]["content"]


def check_reasoning(choices: list[dict[str, Any]]) -> None:
    assert choices[0]["message"]["reasoning_content"].startswith("Considering")
    assert choices[0]["message"]["content"]


def check_multiline_prompt(choices: list[dict[str, Any]]) -> None:
    # The sim answers with the last user message's words: both parts, as two.
    assert set(choices[0]["message"]["content"].split()) <= {"alpha", "beta"}


CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "plain": ({}, check_plain),
    "content_parts": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "alpha"},
                        {"type": "text", "text": "beta"},
                    ],
                }
            ]
        },
        check_multiline_prompt,
    ),
    "tools_auto": ({"tools": [WEATHER, CLOCK]}, check_tool_call("get_weather", "tool_calls")),
    "tools_required": (
        {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False},
        check_tool_call("get_weather", "tool_calls"),
    ),
    "tools_named": (
        {
            "tools": [WEATHER, CLOCK],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        },
        check_tool_call("get_time", "stop"),
    ),
    "tools_none": ({"tools": [WEATHER], "tool_choice": "none"}, check_plain),
    "tool_result_turn": ({"messages": TOOL_TURN, "tools": [WEATHER]}, check_plain),
    "response_text": ({"response_format": {"type": "text"}}, check_plain),
    "json_object": ({"response_format": {"type": "json_object"}}, check_json_object),
    "json_schema": (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "strict": True, "schema": PERSON},
            }
        },
        check_json_schema,
    ),
    "logprobs": ({"logprobs": True, "top_logprobs": 3}, check_logprobs),
    "n2": ({"n": 2, "seed": 3}, check_two_choices),
    "n2_tools": ({"n": 2, "tools": [WEATHER]}, check_tool_call("get_weather", "tool_calls")),
    "reasoning": ({"reasoning_effort": "low"}, check_reasoning),
    "logit_bias": ({"logit_bias": {"50256": -100}}, check_plain),
    "engine_extras": (
        {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "chat_template_kwargs": {"x": 1}},
        check_plain,
    ),
    "no_ops": (
        {
            "modalities": ["text"],
            "store": False,
            "metadata": {"k": "v"},
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "prompt_cache_retention": None,
            "safety_identifier": "x",
            "verbosity": "medium",
        },
        check_plain,
    ),
    "vision": (
        {
            "model": "vision",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        },
        check_plain,
    ),
    "sampling_doubles": ({"temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.1}, check_plain),
}


def request(case: str, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "small", "messages": USER}
    body.update(CASES[case][0])
    body.update(more)
    return body


def assemble(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rebuild the whole answer from stream chunks, as a client does, checking
    OpenAI's order: a role first, fragments, then exactly one finish per choice."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            index = c["index"]
            delta = c["delta"]
            if index not in choices:
                assert delta.get("role") == "assistant", "a choice starts with its role"
                choices[index] = {
                    "index": index,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                    "logprobs": None,
                    "_calls": {},
                }
            choice = choices[index]
            assert choice["finish_reason"] is None, "nothing after a choice's finish"
            message = choice["message"]
            message["content"] += delta.get("content") or ""
            if delta.get("reasoning_content"):
                message["reasoning_content"] = (
                    message.get("reasoning_content", "") + delta["reasoning_content"]
                )
            for fragment in delta.get("tool_calls") or ():
                call = choice["_calls"].setdefault(
                    fragment["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = call["id"] or fragment.get("id", "")
                function = fragment.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            if c.get("logprobs"):
                choice["logprobs"] = choice["logprobs"] or {"content": [], "refusal": None}
                choice["logprobs"]["content"].extend(c["logprobs"]["content"])
            if c["finish_reason"] is not None:
                choice["finish_reason"] = c["finish_reason"]
    out = []
    for index in sorted(choices):
        choice = choices[index]
        calls = choice.pop("_calls")
        assert choice["finish_reason"] is not None, "every choice finishes"
        if calls:
            choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
            choice["message"]["content"] = choice["message"]["content"] or None
        out.append(choice)
    return out


async def stream_chunks(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed request; validate every chunk; return them (after [DONE])."""
    chunks: list[dict[str, Any]] = []
    done = False
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["x-request-id"]
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            assert not done, "nothing after [DONE]"
            if line == "data: [DONE]":
                done = True
                continue
            chunk = orjson.loads(line[6:])
            assert_valid("CreateChatCompletionStreamResponse", chunk)
            chunks.append(chunk)
    assert done
    return chunks


@pytest.mark.parametrize("case", sorted(CASES))
async def test_whole_response_conforms_and_means_it(http: httpx.AsyncClient, case: str) -> None:
    response = await http.post("/v1/chat/completions", json=request(case))
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert "system_fingerprint" not in body
    assert response.headers["x-request-id"]
    CASES[case][1](body["choices"])
    n = request(case).get("n", 1)
    assert len(body["choices"]) == n


@pytest.mark.parametrize("case", sorted(CASES))
async def test_stream_chunks_conform_and_assemble_to_the_same_answer(
    http: httpx.AsyncClient, case: str
) -> None:
    whole = (await http.post("/v1/chat/completions", json=request(case))).json()
    chunks = await stream_chunks(
        http, request(case, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert all("system_fingerprint" not in c for c in chunks)
    streamed = assemble(chunks[:-1])
    CASES[case][1](streamed)
    # The sim is deterministic: streamed and whole answers are the same answer.
    for a, b in zip(streamed, whole["choices"], strict=True):
        assert a["message"].get("content") == b["message"].get("content")
        assert a["message"].get("tool_calls", []) == [
            {k: v for k, v in call.items()} for call in b["message"].get("tool_calls", [])
        ]
        assert a["finish_reason"] == b["finish_reason"]
        if b["logprobs"] is not None:
            assert a["logprobs"] == b["logprobs"]


async def test_stream_without_usage_has_no_usage_key(http: httpx.AsyncClient) -> None:
    chunks = await stream_chunks(http, request("n2", stream=True))
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]  # a role chunk per choice


TOO_LONG = "word " * 20000

ERRORS: list[tuple[str, dict[str, Any], int, str | None, str | None]] = [
    ("n_out_of_range", {"n": 500}, 400, "n", None),
    ("unknown_model", {"model": "nope"}, 404, None, "model_not_found"),
    (
        "image_to_text_model",
        CASES["vision"][0] | {"model": "small"},
        400,
        "messages[0].content[1]",
        None,
    ),
    (
        "context_length",
        {"messages": [{"role": "user", "content": TOO_LONG}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    (
        "named_tool_not_given",
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        400,
        "tool_choice",
        None,
    ),
    (
        "tool_message_without_id",
        {"messages": [*USER, {"role": "tool", "content": "x"}]},
        400,
        "messages[1].tool_call_id",
        None,
    ),
    ("top_logprobs_without_logprobs", {"top_logprobs": 2}, 400, "top_logprobs", None),
    ("reserved_extra", {"request_id": "mine"}, 400, "request_id", None),
    (
        "unsupported_audio_output",
        {"audio": {"voice": "alloy", "format": "wav"}},
        400,
        "audio",
        "unsupported_parameter",
    ),
    ("bad_type", {"logprobs": "yes"}, 400, "logprobs", "invalid_type"),
    (
        "json_schema_missing",
        {"response_format": {"type": "json_schema"}},
        400,
        "response_format.json_schema",
        "missing_required_parameter",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "status", "param", "code"), ERRORS, ids=[e[0] for e in ERRORS]
)
@pytest.mark.parametrize("stream", [False, True])
async def test_errors_conform(
    http: httpx.AsyncClient,
    name: str,
    change: dict[str, Any],
    status: int,
    param: str | None,
    code: str | None,
    stream: bool,
) -> None:
    body = {"model": "small", "messages": USER, **change, "stream": stream}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert_valid("ErrorResponse", error)
    assert error["error"]["param"] == param
    if code is not None:
        assert error["error"]["code"] == code
    assert response.headers["x-request-id"]
    if name == "image_to_text_model":
        assert "sim-small" in error["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/nothing", 404),
        ("POST", "/v1/chat/completions", 400),  # not JSON
    ],
)
async def test_http_level_errors_conform(
    http: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await http.request(method, path, content=b"{not json")
    assert response.status_code == status
    assert_valid("ErrorResponse", response.json())
    assert response.headers["x-request-id"]
    if status == 405:
        assert response.headers["allow"] == "POST"


async def _post_without_bearer(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    built = http.build_request("POST", "/v1/chat/completions", json=request("plain"))
    del built.headers["authorization"]
    built.headers.update(headers)
    return await http.send(built)


async def test_missing_key_is_401_conforming_with_a_request_id(http: httpx.AsyncClient) -> None:
    response = await _post_without_bearer(http, {"x-request-id": "client-id-7"})
    assert response.status_code == 401
    assert_valid("ErrorResponse", response.json())
    assert response.headers["x-request-id"] == "client-id-7"  # the client's id, echoed


async def test_azure_api_key_header_is_accepted(http: httpx.AsyncClient) -> None:
    response = await _post_without_bearer(http, {"api-key": "sk-azure-0123456789"})
    assert response.status_code == 200, response.text
    assert_valid("CreateChatCompletionResponse", response.json())


async def test_models_list_conforms(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/models")
    assert_valid("ListModelsResponse", response.json())
