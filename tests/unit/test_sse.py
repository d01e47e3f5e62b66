from __future__ import annotations

import orjson

from rest_shim.sse import DONE, ChunkEncoder, error_event


def decode(event: bytes) -> dict[str, object]:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return orjson.loads(event[6:-2])  # type: ignore[no-any-return]


def test_content_chunk_is_exact_openai_json() -> None:
    encoder = ChunkEncoder("chatcmpl-1", 1700000000, "m", include_usage=False)
    assert decode(encoder.content('say "hi"\n')) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"content": 'say "hi"\n'},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


def test_role_finish_and_usage_chunks() -> None:
    encoder = ChunkEncoder("c", 1, 'we"ird', include_usage=True)
    role = decode(encoder.role())
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # type: ignore[index]
    assert role["usage"] is None and role["model"] == 'we"ird'
    assert decode(encoder.finish(2))["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    usage = decode(encoder.usage(3, 4))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert DONE == b"data: [DONE]\n\n"


def test_error_event() -> None:
    assert decode(error_event(b'{"error": {}}')) == {"error": {}}
