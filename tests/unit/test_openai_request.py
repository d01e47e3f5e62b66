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
        (pb.ROLE_USER, "ab"),
    ]
    assert params.messages[1].name == "ann"
    assert params.HasField("temperature") and params.temperature == 0.0
    assert not params.HasField("presence_penalty")
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
        (b'{"model": "m", "messages": [], "wat": 1}', "wat", None),
        (
            b'{"model": "m", "messages": [], "response_format": {"type": "json_object"}}',
            "response_format",
            "unsupported_parameter",
        ),
        (
            b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{}]}]}',
            "messages[0].tool_calls",
            "unsupported_parameter",
        ),
    ],
)
def test_shape_errors_name_the_param(raw: bytes, param: str, code: str | None) -> None:
    error = error_of(raw)
    assert (error.status, error.param, error.code) == (400, param, code)


def test_null_unsupported_params_are_accepted() -> None:
    parse_body(b'{"model": "m", "messages": [], "tools": null, "logprobs": false}')
