"""Decode request bodies without stalling the event loop.

Decoding a body (JSON parse, then the caps, validation and conversion) costs
time in proportion to the number of JSON values in it, and Python's JSON
parsers hold the GIL, so a thread would not help: a 3 MB body of 100,000
tiny messages takes 60-300 ms to parse on a busy machine, during which no
stream on that loop moves. Bodies of ``threshold_bytes`` or more are
therefore decoded in a small pool of worker processes; what comes back is
already validated and bounded by the caps (at most ``max_messages``
messages), so taking it in costs the loop little. Small bodies, the common
case, decode in place.

The pool starts with the first large body (most shims never see one) and a
worker that dies is replaced; the request it carried gets a retryable 503.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from llmgw.v1 import chat_pb2 as pb
from rest_shim.errors import ApiError
from rest_shim.openai_request import ChatCompletionBody, parse_body, to_params
from rest_shim.request_limits import RequestLimits

log = logging.getLogger("llmgw.shim")

T = TypeVar("T")


def decode_chat(
    raw: bytes, limits: RequestLimits
) -> tuple[ChatCompletionBody, pb.ChatCompletionParams]:
    """A chat completion body, parsed, capped and translated (raises ApiError)."""
    body = parse_body(raw, limits)
    return body, to_params(body)


class BodyDecoder:
    """Runs decode functions in place for small bodies, in worker processes for large ones."""

    def __init__(self, threshold_bytes: int = 256 * 1024, workers: int = 1) -> None:
        self.threshold_bytes = threshold_bytes
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def run(
        self, decode: Callable[[bytes, RequestLimits], T], raw: bytes, limits: RequestLimits
    ) -> T:
        """``decode(raw, limits)``; ``decode`` must be a module-level function (it is pickled)."""
        if len(raw) < self.threshold_bytes:
            return decode(raw, limits)
        if self._pool is None:
            # spawn, not fork: the shim's loop and gRPC threads must not be forked.
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
            )
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, decode, raw, limits)
        except BrokenProcessPool:
            log.error("a body-decoding worker died; starting a new pool")
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise ApiError(
                503,
                "The server could not decode the request. Please retry.",
                "service_unavailable_error",
                retry_after_s=1,
            ) from None

    def close(self) -> None:
        """Stop the workers (pending decodes are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
