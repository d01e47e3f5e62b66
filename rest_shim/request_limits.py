"""Bounds on the work one REST request can make the shim do on its event loop.

Two parts:

* ``check_counts`` runs on the decoded JSON before any per-message work
  (pydantic objects, proto conversion): too many messages or content parts is
  a 400 naming the limit, in OpenAI's ``array_above_max_length`` shape.
* ``DecodeGate`` runs the decoding of large bodies (JSON parse, validation,
  conversion: bounded by the body limit and the counts, but still up to a few
  hundred milliseconds for an 8 MiB body of tiny objects) one at a time, and
  after each one leaves the loop free for as long as that decode took.
  Python JSON parsers hold the GIL, so a thread would not help. A token on
  its way to a client crosses several loop turns (sidecar, gateway, shim);
  decodes run back to back would each delay one of them, so a burst of large
  bodies used to add up to one long gap. Spaced out, the gap is one decode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rest_shim.errors import ApiError, invalid_request

T = TypeVar("T")


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


class DecodeGate:
    """Runs the decoding of bodies of ``threshold_bytes`` or more one at a time, spaced out.

    Small bodies (the common case) decode at once. A large one waits for the
    gate, then for the loop to have been free as long as the previous large
    decode took, then decodes. Large decodes so use at most half of the loop,
    and no stream waits longer than one decode, however many arrive together.
    """

    def __init__(self, threshold_bytes: int = 64 * 1024) -> None:
        self.threshold_bytes = threshold_bytes
        self._lock = asyncio.Lock()
        self._free_until = 0.0

    async def run(self, size: int, decode: Callable[[], T]) -> T:
        """``decode()``, serialised and spaced with other large decodes when ``size`` is large."""
        if size < self.threshold_bytes:
            return decode()
        async with self._lock:
            await asyncio.sleep(max(0.0, self._free_until - time.perf_counter()))
            began = time.perf_counter()
            try:
                return decode()
            finally:
                ended = time.perf_counter()
                self._free_until = ended + (ended - began)
