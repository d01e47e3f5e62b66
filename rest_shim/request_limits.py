"""Caps on the number of items in one REST request, checked on the decoded JSON
before any per-message work (pydantic objects, proto conversion): too many
messages, content parts or stop sequences is a 400 naming the limit, in
OpenAI's ``array_above_max_length`` shape. (Where a large body is decoded at
all, off the event loop, is ``rest_shim.decoding``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_shim.errors import ApiError, invalid_request


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Per-request caps checked before per-item work (configurable: ShimSettings)."""

    max_messages: int = 2048
    max_content_parts: int = 4096  # over all messages of one request
    max_stop: int = 64  # the gateway allows 4; this only bounds the shim's own work


DEFAULT_LIMITS = RequestLimits()


def _too_long(param: str, limit: int, got: int) -> ApiError:
    return invalid_request(
        f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
        f"but got an array with length {got} instead.",
        param=param,
        code="array_above_max_length",
    )


def check_counts(data: dict[str, Any], limits: RequestLimits) -> None:
    """Raise a 400 if the decoded body has more items than the limits allow.

    Only lengths are read (``len`` of lists is O(1)); the per-message pass over
    content parts runs only once the message count is known to be bounded.
    """
    messages = data.get("messages")
    if isinstance(messages, list):
        if len(messages) > limits.max_messages:
            raise _too_long("messages", limits.max_messages, len(messages))
        parts = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                parts += len(content)
        if parts > limits.max_content_parts:
            raise invalid_request(
                f"Too many content parts: {parts} over all messages; "
                f"at most {limits.max_content_parts} are allowed.",
                param="messages",
                code="array_above_max_length",
            )
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > limits.max_stop:
        raise _too_long("stop", limits.max_stop, len(stop))
