from __future__ import annotations

import pytest

from llmgw.v1 import chat_pb2 as pb
from rest_shim.errors import ApiError
from rest_shim.openai_request import parse_body, to_params


def error_of(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        to_params(parse_body(raw))
    return caught.value


def test_full_body_translates_to_params() -> None:
    params = to_params(
        parse_body(
            b'{"model": "m", "messages": [{"role": "system", "content": "be brief"},'
            b' {"role": "user", "name": "ann", "content": [{"type": "text", "text": "a"},'
            b' {"type": "text", "text": "b"}]}], "max_tokens": 5, "temperature": 0,'
            b' "top_p": 1, "stop": "x", "seed": 7, "n": 1, "user": "u1", "store": false}'
        )
    )
    assert params.model == "m"
    assert [(m.role, m.content) for m in params.messages] == [
        (pb.ROLE_SYSTEM, "be brief"),
        (pb.ROLE_USER, "a\nb"),  # text parts joined as vLLM joins them
    ]
    assert [p.text for p in params.messages[1].parts] == ["a", "b"]
    assert params.messages[1].name == "ann"
    # Sampling values travel as doubles; the deprecated float fields stay unset.
    assert params.sampling.HasField("temperature") and params.sampling.temperature == 0.0
    assert not params.HasField("temperature")
    assert not params.sampling.HasField("presence_penalty")
    assert (params.max_tokens, list(params.stop), params.seed, params.user) == (5, ["x"], 7, "u1")


def test_unknown_role_is_left_for_the_gateway_to_reject() -> None:
    params = to_params(
        parse_body(b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}')
    )
    assert params.messages[0].role == pb.ROLE_UNSPECIFIED


def test_huge_numbers_keep_their_meaning_within_int32() -> None:
    params = to_params(parse_body(b'{"model": "m", "messages": [], "max_tokens": 99999999999999}'))
    assert params.max_tokens == 2**31 - 1
    params = to_params(parse_body(b'{"model": "m", "messages": [], "max_tokens": -99999999999999}'))
    assert params.max_tokens == -1


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b'{"messages": []}', "model", "missing_required_parameter"),
        (b'{"model": 3, "messages": []}', "model", "invalid_type"),
        (b'{"model": "m", "messages": [], "temperature": "hot"}', "temperature", "invalid_type"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "stream", "invalid_type"),
        (
            b'{"model": "m", "messages": [{"content": "x"}]}',
            "messages[0].role",
            "missing_required_parameter",
        ),
        (b'{"model": "m", "messages": [], "seed": 99999999999999999999}', "seed", "invalid_type"),
        (b'{"model": "m", "messages": [], "seed": 18446744073709551615}', "seed", None),
        (
            b'{"model": "m", "messages": [], "audio": {"voice": "x"}}',
            "audio",
            "unsupported_parameter",
        ),
        (
            b'{"model": "m", "messages": [], "modalities": ["text", "audio"]}',
            "modalities",
            "unsupported_parameter",
        ),
        (
            b'{"model": "m", "messages": [], "response_format": {"type": "xml"}}',
            "response_format.type",
            "invalid_type",
        ),
        (
            b'{"model": "m", "messages": [], "response_format": {"type": "json_schema"}}',
            "response_format.json_schema",
            "missing_required_parameter",
        ),
        (
            b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{}]}]}',
            "messages[0].tool_calls[0].id",
            "missing_required_parameter",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}',
            "messages[0].content[0]",
            "unsupported_parameter",
        ),
        (b'{"model": "m", "messages": [], "logit_bias": {"x": 1}}', "logit_bias", None),
        (
            b'{"model": "m", "messages": [], "tool_choice": "sometimes"}',
            "tool_choice",
            "invalid_type",
        ),
    ],
)
def test_shape_errors_name_the_param(raw: bytes, param: str, code: str | None) -> None:
    error = error_of(raw)
    assert (error.status, error.param, error.code) == (400, param, code)


def test_null_unsupported_params_are_accepted() -> None:
    parse_body(b'{"model": "m", "messages": [], "audio": null, "functions": []}')


def test_documented_defaults_and_no_ops_are_accepted_and_ignored() -> None:
    params = to_params(
        parse_body(
            b'{"model": "m", "messages": [], "modalities": ["text"], "store": true,'
            b' "metadata": {"a": "b"}, "service_tier": "auto", "prompt_cache_key": "k",'
            b' "prompt_cache_retention": null, "safety_identifier": "s", "stream": true,'
            b' "stream_options": {"include_usage": true, "include_obfuscation": false}}'
        )
    )
    assert not params.HasField("engine_extras")


def test_unknown_fields_are_engine_extras_forwarded_unchanged() -> None:
    params = to_params(
        parse_body(
            b'{"model": "m", "messages": [], "top_k": 5, "min_p": 0.1,'
            b' "chat_template_kwargs": {"enable_thinking": false}}'
        )
    )
    from google.protobuf import json_format

    assert json_format.MessageToDict(params.engine_extras) == {
        "top_k": 5.0,
        "min_p": 0.1,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_tools_formats_and_logprobs_translate_to_typed_fields() -> None:
    params = to_params(
        parse_body(
            b'{"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls":'
            b' [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},'
            b' {"role": "tool", "tool_call_id": "c1", "content": "42"}],'
            b' "tools": [{"type": "function", "function": {"name": "f", "parameters":'
            b' {"type": "object", "properties": {"x": {"type": "integer"}}}, "strict": true}}],'
            b' "tool_choice": {"type": "function", "function": {"name": "f"}},'
            b' "parallel_tool_calls": false, "logprobs": true, "top_logprobs": 3,'
            b' "logit_bias": {"50256": -100}, "reasoning_effort": "low",'
            b' "response_format": {"type": "json_schema", "json_schema": {"name": "s",'
            b' "schema": {"type": "object"}, "strict": true}}}'
        )
    )
    assert params.messages[0].tool_calls[0].function.name == "f"
    assert params.messages[1].tool_call_id == "c1"
    assert params.tools[0].function.parameters["type"] == "object"
    assert params.tools[0].function.strict
    assert params.tool_choice.function_name == "f"
    assert params.HasField("parallel_tool_calls") and not params.parallel_tool_calls
    assert (params.logprobs, params.top_logprobs) == (True, 3)
    assert dict(params.logit_bias) == {50256: -100.0}
    assert params.reasoning_effort == 3  # REASONING_EFFORT_LOW
    assert params.response_format.json_schema.name == "s"
    assert params.response_format.json_schema.schema["type"] == "object"
