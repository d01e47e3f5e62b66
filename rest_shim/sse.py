"""Byte-exact OpenAI chat.completion.chunk SSE encoding.

Everything constant in a stream's chunks (id, created, model, the JSON
around the delta) is encoded once per stream; each plain-text token then
costs one orjson.dumps of its text and one bytes join. Richer events (tool
calls, reasoning, log probabilities, other choices) build their choice
object as a dict, off that path.
"""

from __future__ import annotations

from typing import Any

import orjson

from rest_shim.render import logprobs_json

DONE = b"data: [DONE]\n\n"
# An SSE comment: ignored by clients, keeps idle connections open.
KEEPALIVE = b": keep-alive\n\n"

FINISH_REASONS = {1: "stop", 2: "length", 3: "content_filter", 4: "tool_calls"}


class ChunkEncoder:
    """Encodes the SSE events of one streamed completion."""

    __slots__ = ("_base", "_choices", "_head", "_logprobs", "_tail")

    def __init__(
        self,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        choices: int = 1,
        logprobs: bool = False,
    ) -> None:
        # No system_fingerprint: the spec has it as a string or absent, never null.
        self._base = (
            b'data: {"id":'
            + orjson.dumps(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(int(created)).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":['
        )
        self._head = self._base + b'{"index":0,"delta":'
        # With include_usage, OpenAI sends "usage":null on every chunk but the last.
        self._tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._choices = choices
        self._logprobs = logprobs

    def role(self) -> bytes:
        """The first chunk(s): the assistant role and empty content, one per choice."""
        out = (
            self._head
            + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
            + self._tail
        )
        for index in range(1, self._choices):
            out += self._choice_chunk(
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        return out

    def content(self, text: str) -> bytes:
        """A content delta of the first choice."""
        return (
            self._head
            + b'{"content":'
            + orjson.dumps(text)
            + b'},"logprobs":null,"finish_reason":null}]'
            + self._tail
        )

    def choice(self, event: Any) -> bytes:
        """A rich event (llmgw.v1.ChoiceDelta): another choice's text, reasoning,
        tool-call fragments, log probabilities."""
        delta: dict[str, Any] = {}
        if event.content:
            delta["content"] = event.content
        if event.reasoning_content:
            delta["reasoning_content"] = event.reasoning_content
        if event.tool_calls:
            calls = []
            for call in event.tool_calls:
                fragment: dict[str, Any] = {"index": call.index}
                function: dict[str, str] = {}
                if call.id:
                    fragment["id"] = call.id
                    fragment["type"] = "function"
                if call.name:
                    function["name"] = call.name
                    function["arguments"] = call.arguments
                elif call.arguments or not call.id:
                    function["arguments"] = call.arguments
                if function:
                    fragment["function"] = function
                calls.append(fragment)
            delta["tool_calls"] = calls
        logprobs = None
        if self._logprobs and event.content:
            logprobs = {"content": logprobs_json(event.logprobs), "refusal": None}
        return self._choice_chunk(
            {"index": event.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        )

    def finish(self, reason_code: int, choice_reasons: Any = ()) -> bytes:
        """The chunk(s) carrying the finish reason (empty delta), one per choice."""
        if not choice_reasons:
            reason = FINISH_REASONS.get(reason_code, "stop")
            return (
                self._head
                + b'{},"logprobs":null,"finish_reason":"'
                + reason.encode()
                + b'"}]'
                + self._tail
            )
        return b"".join(
            self._choice_chunk(
                {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": FINISH_REASONS.get(code, "stop"),
                }
            )
            for index, code in enumerate(choice_reasons)
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The final usage chunk (empty choices), sent when include_usage was asked."""
        usage = orjson.dumps(
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        )
        return self._base + b'],"usage":' + usage + b"}\n\n"

    def _choice_chunk(self, choice: dict[str, Any]) -> bytes:
        return self._base + orjson.dumps(choice) + b"]" + self._tail


def error_event(body: bytes) -> bytes:
    """An in-stream error, shaped as OpenAI sends it: ``data: {"error": {...}}``."""
    return b"data: " + body + b"\n\n"
