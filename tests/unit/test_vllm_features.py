"""The vllm engine's mapping of tools, formats, log probabilities, n, reasoning
and engine extras to vLLM's OpenAI server, and of its stream back to events."""

from __future__ import annotations

import orjson

from backends.engine import (
    ChoiceEvent,
    Delta,
    EngineMessage,
    EngineRequest,
    FinishReason,
    ToolCallFragment,
)
from backends.engines.vllm_protocol import StreamParser, chat_body, error_from_response

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_features_reach_vllm_as_its_own_fields() -> None:
    request = EngineRequest(
        "r1",
        "m",
        [
            EngineMessage(
                "user",
                "a\nb",
                parts=(
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "u"}},
                ),
            ),
            EngineMessage(
                "assistant",
                "",
                tool_calls=(
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                ),
            ),
            EngineMessage("tool", "42", tool_call_id="c1"),
        ],
        max_tokens=None,
        temperature=0.7,
        n=2,
        logprobs=True,
        top_logprobs=3,
        logit_bias={"5": -100.0},
        tools=(TOOL,),
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
        reasoning_effort="low",
        extras={"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}},
    )
    body = orjson.loads(chat_body(request, "served"))
    assert "max_tokens" not in body  # unset: vLLM's default, the rest of the context
    assert body["temperature"] == 0.7  # a double all the way
    assert body["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "u"}}
    assert (
        body["messages"][1]["content"] is None
        and body["messages"][1]["tool_calls"][0]["id"] == "c1"
    )
    assert body["messages"][2]["tool_call_id"] == "c1"
    assert (body["n"], body["logprobs"], body["top_logprobs"]) == (2, True, 3)
    assert body["logit_bias"] == {"5": -100.0}
    assert body["tools"] == [TOOL] and body["tool_choice"]["function"]["name"] == "f"
    assert body["parallel_tool_calls"] is False
    assert body["response_format"]["type"] == "json_schema"
    assert body["reasoning_effort"] == "low"
    assert body["top_k"] == 5 and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["stream"] is True and body["model"] == "served"


def feed(parser: StreamParser, chunk: dict[str, object]) -> object:
    return parser.feed(orjson.dumps(chunk))


def usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 7, "completion_tokens": n}


def test_tool_call_deltas_logprobs_reasoning_and_choices_become_events() -> None:
    parser = StreamParser()
    assert (
        feed(parser, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        is None
    )
    reasoning = feed(
        parser,
        {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}], "usage": usage(1)},
    )
    assert reasoning == ChoiceEvent(0, 1, reasoning="hmm")
    first = feed(
        parser,
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
            "usage": usage(2),
        },
    )
    assert first == ChoiceEvent(0, 1, tool_calls=(ToolCallFragment(0, "call_1", "f", ""),))
    more = feed(
        parser,
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]},
                }
            ],
            "usage": usage(4),
        },
    )
    assert more == ChoiceEvent(0, 2, tool_calls=(ToolCallFragment(0, "", "", '{"a"'),))
    logprob = {
        "token": "x",
        "logprob": -0.5,
        "bytes": [120],
        "top_logprobs": [{"token": "x", "logprob": -0.5, "bytes": [120]}],
    }
    other = feed(
        parser,
        {
            "choices": [
                {"index": 1, "delta": {"content": "x"}, "logprobs": {"content": [logprob]}}
            ],
            "usage": usage(1),
        },
    )
    assert isinstance(other, ChoiceEvent) and other.index == 1 and other.text == "x"
    assert other.logprobs[0].top == (("x", -0.5, b"x"),)
    plain = feed(parser, {"choices": [{"index": 0, "delta": {"content": "y"}}], "usage": usage(5)})
    assert plain == Delta("y", 1)  # the first choice's plain text stays the cheap event
    feed(parser, {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    feed(parser, {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]})
    feed(parser, {"choices": [], "usage": usage(9)})
    parser.feed(b"[DONE]")
    finished = parser.finished()
    assert finished.reason is FinishReason.TOOL_CALLS
    assert finished.choice_reasons == (FinishReason.TOOL_CALLS, FinishReason.LENGTH)
    assert finished.completion_tokens == 9


def test_newer_vllm_reasoning_field_is_read_too() -> None:
    parser = StreamParser()
    assert feed(parser, {"choices": [{"index": 0, "delta": {"reasoning": "so"}}]}) == ChoiceEvent(
        0, 1, reasoning="so"
    )


def test_context_overflow_is_context_length_exceeded() -> None:
    error = error_from_response(
        400,
        orjson.dumps(
            {
                "error": {
                    "message": "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens.",
                    "param": "input_tokens",
                }
            }
        ),
    )
    assert error.reason == "context_length_exceeded"
