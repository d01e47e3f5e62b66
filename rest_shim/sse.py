"""Byte-exact OpenAI chat.completion.chunk SSE encoding.

Everything constant in a stream's chunks (id, created, model, the JSON
around the delta) is encoded once per stream; each token then costs one
orjson.dumps of its text and one bytes join.
"""

from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"
# An SSE comment: ignored by clients, keeps idle connections open.
KEEPALIVE = b": keep-alive\n\n"

FINISH_REASONS = {1: "stop", 2: "length", 3: "content_filter"}


class ChunkEncoder:
    """Encodes the SSE events of one streamed completion."""

    __slots__ = ("_head", "_tail")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            b'data: {"id":'
            + orjson.dumps(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(int(created)).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"system_fingerprint":null,"choices":[{"index":0,"delta":'
        )
        # With include_usage, OpenAI sends "usage":null on every chunk but the last.
        self._tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"

    def role(self) -> bytes:
        """The first chunk: the assistant role and empty content."""
        return (
            self._head
            + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
            + self._tail
        )

    def content(self, text: str) -> bytes:
        """A content delta."""
        return (
            self._head
            + b'{"content":'
            + orjson.dumps(text)
            + b'},"logprobs":null,"finish_reason":null}]'
            + self._tail
        )

    def finish(self, reason_code: int) -> bytes:
        """The chunk carrying the finish reason (empty delta)."""
        reason = FINISH_REASONS.get(reason_code, "stop")
        return (
            self._head
            + b'{},"logprobs":null,"finish_reason":"'
            + reason.encode()
            + b'"}]'
            + self._tail
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The final usage chunk (empty choices), sent when include_usage was asked."""
        head = self._head[: self._head.index(b'"choices":')]
        usage = orjson.dumps(
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        )
        return head + b'"choices":[],"usage":' + usage + b"}\n\n"


def error_event(body: bytes) -> bytes:
    """An in-stream error, shaped as OpenAI sends it: ``data: {"error": {...}}``."""
    return b"data: " + body + b"\n\n"
