"""OpenAI JSON for the gateway's whole completions (the non-streamed answer)."""

from __future__ import annotations

from typing import Any

from llmgw.v1 import chat_pb2 as pb

FINISH_REASONS = {1: "stop", 2: "length", 3: "content_filter", 4: "tool_calls"}


def logprobs_json(entries: Any) -> list[dict[str, Any]]:
    """llmgw.v1.TokenLogprob entries as OpenAI's ChatCompletionTokenLogprob objects."""
    return [
        {
            "token": e.token,
            "logprob": e.logprob,
            "bytes": list(e.bytes),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
                for t in e.top_logprobs
            ],
        }
        for e in entries
    ]


def message_json(message: pb.ChatMessage) -> dict[str, Any]:
    """An assistant message; content is null when the turn only called tools."""
    body: dict[str, Any] = {
        "role": "assistant",
        "content": message.content if message.content or not message.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if message.tool_calls:
        body["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    if message.HasField("reasoning_content"):
        body["reasoning_content"] = message.reasoning_content
    return body


def completion_json(response: pb.CreateChatCompletionResponse, logprobs: bool) -> dict[str, Any]:
    """OpenAI's chat.completion object (no system_fingerprint: a string or absent)."""
    choices = list(response.choices) or [
        pb.Choice(index=0, message=response.message, finish_reason=response.finish_reason)
    ]
    usage = response.usage
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": response.model,
        "choices": [
            {
                "index": c.index,
                "message": message_json(c.message),
                "logprobs": (
                    {"content": logprobs_json(c.logprobs), "refusal": None} if logprobs else None
                ),
                "finish_reason": FINISH_REASONS.get(c.finish_reason, "stop"),
            }
            for c in choices
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }
