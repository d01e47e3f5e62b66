from __future__ import annotations

import math

import pytest

from gateway.domain.chat import (
    ChatRequest,
    Features,
    FunctionTool,
    Message,
    ResponseFormat,
    ResponseFormatType,
    Role,
    ToolChoice,
    ToolChoiceMode,
)
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
        ({"n": 129}, "n"),
        ({"n": 0}, "n"),
        ({"messages": (Message(Role.TOOL, "42"),)}, "messages[0].tool_call_id"),
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
    assert fields_of(with_(n=500, temperature=-1, stop=("x",) * 9)) == [
        "n",
        "temperature",
        "stop",
    ]


def test_n_up_to_128_is_accepted() -> None:
    check_request_shape(with_(n=2))
    check_request_shape(with_(n=128))


TOOL = FunctionTool("get_weather", parameters={"type": "object"})


@pytest.mark.parametrize(
    ("features", "field"),
    [
        (Features(tools=(FunctionTool("bad name"),)), "tools[0].function.name"),
        (Features(tool_choice=ToolChoice(ToolChoiceMode.REQUIRED)), "tool_choice"),
        (
            Features(tools=(TOOL,), tool_choice=ToolChoice(ToolChoiceMode.REQUIRED, "other")),
            "tool_choice",
        ),
        (
            Features(response_format=ResponseFormat(ResponseFormatType.JSON_SCHEMA, name="s")),
            "response_format.json_schema.schema",
        ),
        (Features(top_logprobs=21, logprobs=True), "top_logprobs"),
        (Features(top_logprobs=2), "top_logprobs"),
        (Features(logit_bias={5: 101.0}), "logit_bias"),
        (Features(engine_extras={"temperature": 3}), "temperature"),
        (Features(engine_extras={"blob": "x" * 20000}), "engine_extras"),
    ],
)
def test_feature_rules_name_their_field(features: Features, field: str) -> None:
    assert fields_of(with_(features=features)) == [field]


def test_valid_features_pass() -> None:
    check_request_shape(
        with_(
            features=Features(
                n=3,
                tools=(TOOL,),
                tool_choice=ToolChoice(ToolChoiceMode.REQUIRED, "get_weather"),
                response_format=ResponseFormat(
                    ResponseFormatType.JSON_SCHEMA, name="s", schema={"type": "object"}
                ),
                logprobs=True,
                top_logprobs=20,
                logit_bias={50256: -100.0},
                engine_extras={"top_k": 5, "chat_template_kwargs": {"x": 1}},
            )
        )
    )
    # tool_choice "none" without tools is what some clients send by default.
    check_request_shape(with_(features=Features(tool_choice=ToolChoice(ToolChoiceMode.NONE))))


def test_no_max_tokens_means_the_model_limit_unless_the_operator_set_a_default() -> None:
    assert resolve_max_tokens(OK, OutputLimits(None, 1000)) is None


def test_max_tokens_defaults_caps_and_precedence() -> None:
    assert resolve_max_tokens(OK, LIMITS) == 100
    assert resolve_max_tokens(with_(max_tokens=7), LIMITS) == 7
    assert resolve_max_tokens(with_(max_tokens=7, max_completion_tokens=9), LIMITS) == 9
    assert resolve_max_tokens(with_(max_tokens=1000), LIMITS) == 1000
    with pytest.raises(InvalidRequest) as caught:
        resolve_max_tokens(with_(max_tokens=1001), LIMITS)
    assert caught.value.violations[0].field == "max_tokens"
    assert "at most 1000" in caught.value.message
