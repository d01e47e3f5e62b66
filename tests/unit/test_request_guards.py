"""The shim's credential check and request caps, and the gateway's list cap, as functions."""

from __future__ import annotations

import pickle

import pytest

from gateway.transport.request_limits import oversized_list
from llmgw.v1 import chat_pb2 as pb
from rest_shim.auth_guard import credential
from rest_shim.errors import ApiError
from rest_shim.request_limits import RequestLimits, check_counts


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([(b"authorization", b"Bearer sk-abc")], "sk-abc"),
        ([(b"authorization", b"bearer   llmgw_0123_x-y.z~+/==")], "llmgw_0123_x-y.z~+/=="),
        ([(b"api-key", b" azure-style-key ")], "azure-style-key"),
        ([(b"content-type", b"application/json"), (b"api-key", b"k")], "k"),
    ],
)
def test_well_formed_credentials_are_accepted(
    headers: list[tuple[bytes, bytes]], token: str
) -> None:
    assert credential(headers, 512) == token


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"")],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"authorization", b"Bearer")],
        [(b"authorization", b"Bearer two tokens")],
        [(b"authorization", "Bearer clé".encode())],  # not latin-1 as sent
        [(b"authorization", b"Bearer \xff\xfe")],
        [(b"authorization", b"Bearer " + b"a" * 513)],
        [(b"api-key", b"has space")],
        # A malformed Authorization is not rescued by a good api-key after it.
        [(b"authorization", b"Token x"), (b"api-key", b"good")],
    ],
)
def test_missing_or_malformed_credentials_are_401(headers: list[tuple[bytes, bytes]]) -> None:
    found = credential(headers, 512)
    assert isinstance(found, ApiError)
    assert found.status == 401 and found.code == "invalid_api_key"
    assert found.headers()["www-authenticate"] == "Bearer"
    assert b"\xff" not in found.body() and "clé" not in found.message


def test_message_and_part_counts_are_capped_before_parsing_items() -> None:
    limits = RequestLimits(max_messages=3, max_content_parts=4, max_stop=2)
    check_counts({"messages": [{}, {}, {}]}, limits)
    with pytest.raises(ApiError) as caught:
        check_counts({"messages": [{}, {}, {}, {}]}, limits)
    assert caught.value.status == 400 and caught.value.code == "array_above_max_length"
    assert caught.value.param == "messages" and "maximum length 3" in caught.value.message
    parts = [{"type": "text", "text": "x"}] * 3
    check_counts({"messages": [{"content": parts[:2]}, {"content": parts[:2]}]}, limits)
    with pytest.raises(ApiError, match="content parts"):
        check_counts({"messages": [{"content": parts}, {"content": parts[:2]}]}, limits)
    with pytest.raises(ApiError, match="'stop'"):
        check_counts({"stop": ["a", "b", "c"]}, limits)
    # Shapes the parser reports itself are left alone here.
    check_counts({"messages": "not a list", "stop": "x"}, limits)
    check_counts({"messages": [1, None, {"content": "text"}]}, limits)


def test_the_gateway_finds_over_long_lists_in_nested_params() -> None:
    params = pb.ChatCompletionParams(model="m", stop=["a"])
    params.messages.extend([pb.ChatMessage(role=pb.ROLE_USER, content="x")] * 5)
    request = pb.StreamChatCompletionRequest(params=params)
    assert oversized_list(request, 5) is None
    assert oversized_list(request, 4) == ("params.messages", 5)
    params.ClearField("messages")
    params.stop.extend(["b", "c"])
    assert oversized_list(pb.CreateChatCompletionRequest(params=params), 2) == ("params.stop", 3)


def test_errors_survive_the_trip_back_from_a_decoding_worker() -> None:
    error = ApiError(400, "bad", "invalid_request_error", "messages", "code", 2.0, {"x-a": "b"})
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.message, copy.type, copy.param, copy.code) == (
        400,
        "bad",
        "invalid_request_error",
        "messages",
        "code",
    )
    assert copy.headers() == {"x-a": "b", "retry-after": "2"}
