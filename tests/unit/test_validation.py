from __future__ import annotations

import math

import pytest

from gateway.domain.chat import ChatRequest, Message, Role
from gateway.domain.validation import check_request_shape, resolve_max_tokens
from gateway.errors import InvalidRequest
from gateway.routing.limits import OutputLimits

LIMITS = OutputLimits(default_max_tokens=100, max_output_tokens=1000)
OK = ChatRequest(model="m", messages=(Message(Role.USER, "hi"),))


def with_(**kw: object) -> ChatRequest:
    fields = {f: getattr(OK, f) for f in OK.__dataclass_fields__}
    return ChatRequest(**{**fields, **kw})  # type: ignore[arg-type]


def fields_of(request: ChatRequest) -> list[str]:
    with pytest.raises(InvalidRequest) as caught:
        check_request_shape(request)
    return [v.field for v in caught.value.violations]


def test_a_plain_request_passes() -> None:
    check_request_shape(OK)


def test_zero_is_a_real_temperature() -> None:
    check_request_shape(with_(temperature=0.0, presence_penalty=0.0, seed=0))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": ""}, "model"),
        ({"messages": ()}, "messages"),
        ({"messages": (Message(None, "x"),)}, "messages[0].role"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"stop": ("a",) * 5}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ],
)
def test_each_rule_names_its_field(change: dict[str, object], field: str) -> None:
    assert fields_of(with_(**change)) == [field]


def test_all_violations_are_collected() -> None:
    assert fields_of(with_(n=5, temperature=-1, stop=("x",) * 9)) == ["n", "temperature", "stop"]


def test_max_tokens_defaults_caps_and_precedence() -> None:
    assert resolve_max_tokens(OK, LIMITS) == 100
    assert resolve_max_tokens(with_(max_tokens=7), LIMITS) == 7
    assert resolve_max_tokens(with_(max_tokens=7, max_completion_tokens=9), LIMITS) == 9
    assert resolve_max_tokens(with_(max_tokens=1000), LIMITS) == 1000
    with pytest.raises(InvalidRequest) as caught:
        resolve_max_tokens(with_(max_tokens=1001), LIMITS)
    assert caught.value.violations[0].field == "max_tokens"
    assert "at most 1000" in caught.value.message
