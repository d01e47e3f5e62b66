"""The vLLM engine's translation to and from vLLM's OpenAI HTTP API, on vLLM's real bytes."""

from __future__ import annotations

import orjson
import pytest

from backends.engine import (
    Delta,
    EngineFailed,
    EngineMessage,
    EngineRejectedRequest,
    EngineRequest,
    EngineUnavailable,
    Finished,
    FinishReason,
)
from backends.engines.vllm_protocol import (
    StreamParser,
    chat_body,
    error_from_response,
    parse_metrics,
)

# A stream as vLLM 0.32 sent it (stream_options include_usage + continuous_usage_stats).
RECORDED_STREAM = b"""data: {"id":"chatcmpl-a3e9","object":"chat.completion.chunk","created":1795968691,"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":32,"total_tokens":32,"completion_tokens":0,"completion_tokens_details":null},"prompt_token_ids":null,"prompt_text":null}

data: {"id":"chatcmpl-a3e9","object":"chat.completion.chunk","created":1795968691,"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"content":"M"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":{"prompt_tokens":32,"total_tokens":33,"completion_tokens":1,"completion_tokens_details":null}}

data: {"id":"chatcmpl-a3e9","object":"chat.completion.chunk","created":1795968691,"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"content":"ali"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":{"prompt_tokens":32,"total_tokens":34,"completion_tokens":2,"completion_tokens_details":null}}

data: {"id":"chatcmpl-a3e9","object":"chat.completion.chunk","created":1795968691,"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"content":" join"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}],"usage":{"prompt_tokens":32,"total_tokens":35,"completion_tokens":3,"completion_tokens_details":null}}

data: {"id":"chatcmpl-a3e9","object":"chat.completion.chunk","created":1795968691,"model":"smollm2-135m-instruct","choices":[],"usage":{"prompt_tokens":32,"total_tokens":35,"completion_tokens":3},"system_fingerprint":"vllm-0.32.0-43847d58"}

data: [DONE]

"""

RECORDED_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-135m-instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="smollm2-135m-instruct"} 2.0
vllm:num_requests_waiting{engine="0",model_name="smollm2-135m-instruct"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="smollm2-135m-instruct",reason="capacity"} 9.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-135m-instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="smollm2-135m-instruct"} 0.5
vllm:generation_tokens_total{engine="0",model_name="smollm2-135m-instruct"} 72.0
"""


def payloads(stream: bytes) -> list[bytes]:
    return [line[6:] for line in stream.split(b"\n") if line.startswith(b"data: ")]


def request(**kw: object) -> EngineRequest:
    return EngineRequest(
        request_id="r1",
        model="ignored",
        messages=[EngineMessage("developer", "Be brief."), EngineMessage("user", "hi", name="ann")],
        max_tokens=9,
        **kw,  # type: ignore[arg-type]
    )


def test_body_always_asks_for_usage_and_maps_roles() -> None:
    body = orjson.loads(chat_body(request(), "smollm2"))
    assert body == {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi", "name": "ann"},
        ],
        "max_tokens": 9,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


def test_body_carries_sampling_only_when_set() -> None:
    body = orjson.loads(
        chat_body(request(temperature=0.0, seed=7, stop=("\n",), frequency_penalty=0.5), "m")
    )
    assert body["temperature"] == 0.0 and body["seed"] == 7
    assert body["stop"] == ["\n"] and body["frequency_penalty"] == 0.5
    assert "top_p" not in body and "presence_penalty" not in body


def test_recorded_stream_becomes_deltas_then_exact_usage() -> None:
    parser = StreamParser()
    events = [d for p in payloads(RECORDED_STREAM) if (d := parser.feed(p)) is not None]
    assert events == [Delta("M", 1), Delta("ali", 1), Delta(" join", 1)]
    assert parser.finished() == Finished(FinishReason.LENGTH, 32, 3)


def test_tokens_held_back_by_the_detokenizer_are_counted_with_their_text() -> None:
    parser = StreamParser()
    chunk = {"choices": [{"delta": {"content": ""}, "finish_reason": None}]}
    assert parser.feed(orjson.dumps({**chunk, "usage": {"completion_tokens": 1}})) is None
    chunk["choices"][0]["delta"]["content"] = "é"  # type: ignore[index]
    assert parser.feed(orjson.dumps({**chunk, "usage": {"completion_tokens": 2}})) == Delta("é", 2)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("tool_calls", FinishReason.TOOL_CALLS),
    ],
)
def test_finish_reasons(reason: str, expected: FinishReason) -> None:
    parser = StreamParser()
    parser.feed(
        orjson.dumps(
            {
                "choices": [{"delta": {"content": "x"}, "finish_reason": reason}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        )
    )
    parser.feed(b"[DONE]")
    assert parser.finished().reason is expected


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (
            b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}]}\n',
            "without a finish",
        ),
        (b'data: {"choices":[{"delta":{},"finish_reason":"abort"}]}\ndata: [DONE]\n', "aborted"),
        (b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\ndata: [DONE]\n', "no usage"),
    ],
)
def test_streams_that_did_not_end_well_fail(stream: bytes, message: str) -> None:
    parser = StreamParser()
    for p in payloads(stream):
        parser.feed(p)
    with pytest.raises(EngineFailed, match=message):
        parser.finished()


def test_error_event_in_the_stream_raises() -> None:
    error = b'{"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}'
    with pytest.raises(EngineFailed, match="Internal server error"):
        StreamParser().feed(error)
    with pytest.raises(EngineFailed, match="not JSON"):
        StreamParser().feed(b"{oops")


def test_a_chunk_that_is_not_json_is_described_without_its_text() -> None:
    # Generated text must not reach logs: the gateway logs backend errors.
    with pytest.raises(EngineFailed) as failed:
        StreamParser().feed(b'{"choices":[{"delta":{"content":"SECRET-MARKER"')
    message = str(failed.value)
    assert "SECRET-MARKER" not in message and "not JSON" in message
    assert "47 bytes" in message and "'{'" in message


def test_context_too_long_is_the_clients_fault_with_vllms_words() -> None:
    body = (
        b'{"error":{"message":"This model\'s maximum context length is 2048 tokens. However, your '
        b"prompt contains at least 2049 input tokens, which exceeds this limit even without any "
        b"output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
        b'value=2049)","type":"BadRequestError","param":"input_tokens","code":400}}'
    )
    error = error_from_response(400, body)
    assert isinstance(error, EngineRejectedRequest)
    assert error.field == "messages"
    assert str(error).startswith("This model's maximum context length is 2048 tokens.")
    assert "parameter=" not in str(error)


def test_max_tokens_over_the_model_names_max_tokens() -> None:
    body = (
        b'{"error":{"message":"max_tokens=4000 cannot be greater than max_model_len=2048. Please '
        b'request fewer output tokens. (parameter=max_tokens, value=4000)","type":"BadRequestError",'
        b'"param":"max_tokens","code":400}}'
    )
    error = error_from_response(400, body)
    assert isinstance(error, EngineRejectedRequest) and error.field == "max_tokens"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(503, EngineUnavailable), (429, EngineUnavailable), (500, EngineFailed), (404, EngineFailed)],
)
def test_other_statuses(status: int, kind: type[Exception]) -> None:
    assert isinstance(error_from_response(status, b"<html>oops</html>"), kind)


def test_metrics_sum_engines_and_take_the_fullest_kv_cache() -> None:
    load = parse_metrics(RECORDED_METRICS)
    assert (load.running, load.waiting, load.kv_cache_usage) == (5, 4, 0.5)
    assert parse_metrics("").kv_cache_usage is None
