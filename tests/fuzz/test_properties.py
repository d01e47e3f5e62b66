"""Property-based tests (hypothesis) of the parsers and conversions a hostile
client reaches first: whatever the bytes, the REST body parsers answer a body
or a 4xx ApiError, and the proto -> domain conversion never crashes on any
message that decodes. Budgets are small and fixed so `make test` stays fast."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.validation import check_request_shape
from gateway.errors import GatewayError
from gateway.transport.convert import to_chat_request
from llmgw.v1 import chat_pb2 as pb
from rest_shim.completions import parse_completion
from rest_shim.embeddings import parse_embedding
from rest_shim.errors import ApiError
from rest_shim.openai_request import parse_body, to_params
from rest_shim.request_limits import RequestLimits

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
SMALL = RequestLimits(max_messages=8, max_content_parts=8, max_stop=8)

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
    max_leaves=30,
)

# Fields a client names (known, ignored, unsupported and unknown ones), and shapes
# close to valid messages, so the search gets past the first checks.
_keys = st.sampled_from(
    [
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "seed", "n", "stream", "stream_options", "user", "tools", "tool_choice",
        "response_format", "logprobs", "top_logprobs", "logit_bias", "metadata", "store",
        "prompt", "input", "echo", "suffix", "best_of", "encoding_format", "dimensions",
        "parallel_tool_calls", "modalities", "frequency_penalty", "presence_penalty", "x",
    ]
)  # fmt: skip
_roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "robot", ""])
_parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": _text}),
    max_size=3,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": _roles | json_values},
        optional={
            "content": _text | _parts | json_values,
            "name": _text | json_values,
            "tool_calls": json_values,
            "tool_call_id": _text,
        },
    ),
    max_size=10,
)
bodies = st.fixed_dictionaries(
    {"model": _text | json_values, "messages": _messages | json_values},
    optional={"prompt": _text | st.lists(_text) | json_values, "input": _text | json_values},
).flatmap(
    lambda base: st.dictionaries(_keys, json_values, max_size=6).map(
        lambda extra: {**extra, **base}
    )
)


def _dumps(value: Any) -> bytes:
    # The stdlib encoder: it writes integers of any size, as a hostile client may.
    return json.dumps(value).encode()


def _answers_or_400(parse: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return parse(raw)
    except ApiError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        assert error.message and "Traceback" not in error.message
        return None


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(_dumps))
def test_any_bytes_are_a_body_or_a_4xx(raw: bytes) -> None:
    for parse in (lambda r: parse_body(r, SMALL), parse_completion, parse_embedding):
        _answers_or_400(parse, raw)


@FUZZ
@given(body=bodies)
def test_chat_bodies_parse_and_translate_or_are_4xx(body: dict[str, Any]) -> None:
    parsed = _answers_or_400(lambda r: parse_body(r, SMALL), _dumps(body))
    if parsed is not None:
        params = _answers_or_400(lambda _: to_params(parsed), b"")
        if params is not None:
            params.SerializeToString()  # a message the gateway can receive
    _answers_or_400(parse_completion, _dumps(body))
    _answers_or_400(parse_embedding, _dumps(body))


def _convert_and_validate(params: pb.ChatCompletionParams) -> None:
    request = to_chat_request(params)  # never raises: bad values are validation's to report
    try:
        check_request_shape(request)
    except GatewayError as error:
        assert error.message


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_decodable_params_convert_without_crashing(raw: bytes) -> None:
    try:
        params = pb.ChatCompletionParams.FromString(raw)
    except DecodeError:
        return
    _convert_and_validate(params)


_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
_int32 = st.integers(-(2**31), 2**31 - 1)


@FUZZ
@given(
    model=_text,
    messages=st.lists(st.tuples(st.integers(-3, 10), _text, st.none() | _text), max_size=6),
    temperature=st.none() | _floats,
    top_p=st.none() | _floats,
    max_tokens=st.none() | _int32,
    n=st.none() | _int32,
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    stop=st.lists(_text, max_size=6),
)
def test_structured_params_convert_and_validate(
    model: str,
    messages: list[tuple[int, str, str | None]],
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    n: int | None,
    seed: int | None,
    stop: list[str],
) -> None:
    params = pb.ChatCompletionParams(model=model, stop=stop)
    for role, content, name in messages:
        message = params.messages.add(role=role, content=content)  # type: ignore[arg-type]
        if name is not None:
            message.name = name
    for field, value in (
        ("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens),
        ("n", n), ("seed", seed),
    ):  # fmt: skip
        if value is not None:
            setattr(params, field, value)
    _convert_and_validate(params)
