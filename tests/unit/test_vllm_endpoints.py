"""The vLLM engine's raw-prompt completions and embeddings: request bodies and the
parsing of vLLM's answers (pure functions, no I/O)."""

from __future__ import annotations

import orjson
import pytest

from backends.engine import (
    ChoiceEvent,
    Delta,
    EmbedRequest,
    EngineFailed,
    EngineRequest,
    Finished,
    FinishReason,
)
from backends.engines.vllm_embeddings import embedding_bodies, parse_embeddings
from backends.engines.vllm_protocol import StreamParser, chat_body

# /v1/completions chunks shaped as vLLM 0.32 streams them (text, not delta.content).
COMPLETION_STREAM = [
    b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    b'"text":" Paris","logprobs":null,"finish_reason":null,"stop_reason":null}],'
    b'"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}',
    b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    b'"text":".","logprobs":null,"finish_reason":"length","stop_reason":null}],'
    b'"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}',
    b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}',
    b"[DONE]",
]
# vLLM 0.32's answer for all-MiniLM-L6-v2 and ["hello", "world"], vectors cut to 3 values.
EMBEDDINGS = (
    b'{"id": "embd-957839b25b3d8e22", "object": "list", "created": 1796296427, "model": '
    b'"all-minilm-l6-v2", "data": [{"index": 1, "object": "embedding", "embedding": '
    b'[-0.03044447861611843, 0.0319506898522377, -0.0638776645064354]}, {"index": 0, '
    b'"object": "embedding", "embedding": [-0.06283381581306458, 0.05580280348658562, '
    b'0.05160577967762947]}], "usage": {"prompt_tokens": 6, "total_tokens": 6, '
    b'"completion_tokens": 0, "prompt_tokens_details": null, "completion_tokens_details": null}}'
)


def test_a_raw_prompt_body_has_the_prompt_and_no_messages() -> None:
    request = EngineRequest(
        request_id="r", model="x", messages=(), max_tokens=4, prompt="The capital of France is"
    )
    body = orjson.loads(chat_body(request, "smollm2"))
    assert body["prompt"] == "The capital of France is" and "messages" not in body
    assert body["max_tokens"] == 4 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_a_completions_stream_becomes_deltas_then_usage() -> None:
    parser = StreamParser()
    events = [e for p in COMPLETION_STREAM if (e := parser.feed(p)) is not None]
    assert events == [Delta(" Paris", 1), Delta(".", 1)]
    assert parser.finished() == Finished(FinishReason.LENGTH, 5, 2)


def test_texts_and_token_ids_go_in_separate_bodies_and_come_back_in_order() -> None:
    request = EmbedRequest("r", "m", inputs=["a", (1, 2), "b"], dimensions=16)
    bodies = embedding_bodies(request, "served")
    assert [positions for positions, _ in bodies] == [[0, 2], [1]]
    texts, tokens = (orjson.loads(body) for _, body in bodies)
    assert texts == {"model": "served", "input": ["a", "b"], "encoding_format": "float",
                     "dimensions": 16}  # fmt: skip
    assert tokens["input"] == [[1, 2]]


def test_vllms_answer_is_parsed_in_input_order() -> None:
    vectors, tokens = parse_embeddings(EMBEDDINGS, 2)
    assert tokens == 6
    assert vectors[0][0] == pytest.approx(-0.06283381581306458)
    assert vectors[1][2] == pytest.approx(-0.0638776645064354)


@pytest.mark.parametrize(
    ("body", "count"), [(EMBEDDINGS, 3), (b"not json", 1), (b'{"data": [{"index": 0}]}', 1)]
)
def test_a_malformed_or_short_answer_is_a_failure(body: bytes, count: int) -> None:
    with pytest.raises(EngineFailed):
        parse_embeddings(body, count)


def test_legacy_logprobs_are_asked_as_a_count_and_read_back_as_entries() -> None:
    request = EngineRequest(
        request_id="r", model="x", messages=(), max_tokens=2, prompt="Hi", logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    body = orjson.loads(chat_body(request, "m"))
    assert body["logprobs"] == 2 and "top_logprobs" not in body
    parser = StreamParser()
    chunk = (
        b'{"choices":[{"index":0,"text":" there","finish_reason":null,"logprobs":'
        b'{"text_offset":[0],"token_logprobs":[-0.25],"tokens":[" there"],'
        b'"top_logprobs":[{" there":-0.25," you":-1.5}]}}],"usage":{"completion_tokens":1}}'
    )
    event = parser.feed(chunk)
    assert isinstance(event, ChoiceEvent) and event.text == " there"
    [entry] = event.logprobs
    assert (entry.token, entry.logprob, entry.bytes) == (" there", -0.25, b" there")
    assert entry.top == ((" there", -0.25, b" there"), (" you", -1.5, b" you"))
