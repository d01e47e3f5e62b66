"""ASGI responses that run a gateway call and cancel it when the client leaves.

Starlette's StreamingResponse notices a disconnect only when a write fails,
which for a backend still thinking about its first token may be never. These
responses listen for ``http.disconnect`` themselves and cancel the gRPC call
at once, which cancels the gateway's backend call, which aborts the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmgw.v1 import chat_pb2 as pb
from rest_shim import request_id
from rest_shim.drain import SHUTTING_DOWN, is_draining
from rest_shim.errors import ApiError, from_grpc_error
from rest_shim.render import completion_json
from rest_shim.sse import DONE, KEEPALIVE, ChunkEncoder, error_event

log = logging.getLogger("llmgw.shim")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def watch_disconnect(receive: Receive, call: grpc.aio.Call) -> asyncio.Task[None]:
    """Cancel ``call`` as soon as the client disconnects."""
    task = asyncio.create_task(_wait_for_disconnect(receive))
    task.add_done_callback(lambda t: None if t.cancelled() else call.cancel())
    return task


async def send_error(send: Send, error: ApiError, scope: Scope) -> None:
    """Answer an OpenAI error JSON with its status and headers."""
    headers = [
        *JSON_HEADERS,
        request_id.header(scope),
        *((k.encode(), v.encode()) for k, v in error.headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.body()})


class ErrorResponse(Response):
    """An OpenAI-shaped error as a starlette Response."""

    def __init__(self, error: ApiError, rid: str | None = None) -> None:
        headers = error.headers()
        if rid is not None:
            headers[request_id.HEADER] = rid
        super().__init__(
            content=error.body(),
            status_code=error.status,
            headers=headers,
            media_type="application/json",
        )


# Gateway response metadata copied to HTTP headers (which model and backend served,
# and the tenant's rate-limit state: x-ratelimit-limit-requests...).
_ROUTING_KEYS = frozenset({"x-llmgw-model", "x-llmgw-backend"})
RATELIMIT_PREFIX = "x-ratelimit-"


def routing_headers(metadata: Any) -> list[tuple[bytes, bytes]]:
    """The gateway's routing and rate-limit metadata as HTTP headers."""
    return [
        (key.encode(), value.encode())
        for key, value in (metadata or ())
        if (key in _ROUTING_KEYS or key.startswith(RATELIMIT_PREFIX)) and isinstance(value, str)
    ]


class UnaryResponse(Response):
    """Runs a unary gateway call and answers ``render(response)`` as JSON, with the
    gateway's routing headers; the call is cancelled if the client leaves first."""

    def __init__(
        self,
        start_call: Callable[[], grpc.aio.UnaryUnaryCall[Any, Any]],
        render: Callable[[Any], bytes],
    ) -> None:
        super().__init__()
        self._start_call = start_call
        self._render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer once the response is whole; cancel the call if the client leaves."""
        call = self._start_call()
        watcher = watch_disconnect(receive, call)
        try:
            response = await call
            routing = routing_headers(await call.initial_metadata())
        except grpc.aio.AioRpcError as error:
            await send_error(send, from_grpc_error(error), scope)
            return
        except asyncio.CancelledError:
            if watcher.done():
                return  # the client left; nobody to answer
            raise
        finally:
            watcher.cancel()
        body = self._render(response)
        headers = [*JSON_HEADERS, request_id.header(scope), *routing]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class CompletionResponse(UnaryResponse):
    """Runs a unary CreateChatCompletion and answers OpenAI's chat.completion JSON."""

    def __init__(
        self, start_call: Callable[[], grpc.aio.UnaryUnaryCall[Any, Any]], logprobs: bool = False
    ) -> None:
        def render(response: pb.CreateChatCompletionResponse) -> bytes:
            return orjson.dumps(completion_json(response, logprobs))

        super().__init__(start_call, render)


class StreamResponse(Response):
    """Runs a server-streaming gateway call and relays it as OpenAI SSE; a subclass
    encodes the events after the first, which is always a StreamStart.

    The HTTP status is decided by the gateway's first event: an error before
    it is a plain HTTP error; after it, an SSE error event and no ``[DONE]``,
    so a failed stream never looks finished.
    """

    # Names the stream in the log line of a relay that failed.
    relay_name = "stream"

    def __init__(
        self, start_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]], keepalive_s: float
    ) -> None:
        super().__init__()
        self._start_call = start_call
        self._keepalive_s = keepalive_s

    async def relay(
        self, start: pb.StreamStart, call: grpc.aio.UnaryStreamCall[Any, Any], send: Send
    ) -> None:
        """Send the SSE events of the stream that ``start`` began, ``[DONE]`` last;
        raise if the gateway's stream ends without its end event."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay the stream; cancel the gateway call as soon as the client leaves."""
        call = self._start_call()
        watcher = watch_disconnect(receive, call)
        started = False
        pending: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        try:
            # Wait for the first event; if it is slow (queueing, a long
            # prefill), commit to 200 and send SSE comments so proxies and
            # clients do not drop an idle connection.
            while not (await asyncio.wait({pending}, timeout=self._keepalive_s))[0]:
                if not started:
                    headers = [*SSE_HEADERS, request_id.header(scope)]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            first = pending.result()
            if first is grpc.aio.EOF or not first.HasField("start"):
                raise RuntimeError("the gateway stream did not begin with StreamStart")
            if not started:
                headers = [*SSE_HEADERS, request_id.header(scope)]
                headers.extend(routing_headers(await call.initial_metadata()))
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
            await self.relay(first.start, call, send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except grpc.aio.AioRpcError as error:
            await self._fail(send, from_grpc_error(error), started, scope)
        except asyncio.CancelledError:
            if watcher.done():
                return  # the client left; the gateway call is already cancelled
            if is_draining(scope):  # cut off at the end of the shutdown grace: say so
                await self._fail(send, SHUTTING_DOWN, started, scope)
                return
            raise
        except Exception:
            # Whatever went wrong, the client must see an error, never a
            # stream that just stops; the traceback goes to our log only.
            log.exception("%s relay failed", self.relay_name)
            await self._fail(
                send,
                ApiError(500, "The server had an error while relaying the stream.", "server_error"),
                started,
                scope,
            )
        finally:
            pending.cancel()
            watcher.cancel()
            call.cancel()

    @staticmethod
    async def _fail(send: Send, error: ApiError, started: bool, scope: Scope) -> None:
        try:
            if not started:
                await send_error(send, error, scope)
                return
            await send(
                {
                    "type": "http.response.body",
                    "body": error_event(error.body()),
                    "more_body": False,
                }
            )
        except OSError:
            pass  # the client is gone too; nothing left to tell


class CompletionStreamResponse(StreamResponse):
    """Runs a StreamChatCompletion and relays it as OpenAI ``chat.completion.chunk`` SSE."""

    def __init__(
        self,
        start_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        include_usage: bool,
        keepalive_s: float = 15.0,
        choices: int = 1,
        logprobs: bool = False,
    ) -> None:
        super().__init__(start_call, keepalive_s)
        self._include_usage = include_usage
        self._choices = choices
        self._logprobs = logprobs

    async def relay(
        self, start: pb.StreamStart, call: grpc.aio.UnaryStreamCall[Any, Any], send: Send
    ) -> None:
        """The role chunk, then a chunk per event; the finish (and usage) chunks and ``[DONE]``."""
        encoder = ChunkEncoder(
            start.id,
            start.created,
            start.model,
            self._include_usage,
            choices=self._choices,
            logprobs=self._logprobs,
        )
        await send({"type": "http.response.body", "body": encoder.role(), "more_body": True})
        content = encoder.content
        ended = False
        read = call.read
        while (message := await read()) is not grpc.aio.EOF:
            # Per-token path: one field test, one encode, one send.
            if message.HasField("delta"):
                chunk = content(message.delta.content)
            elif message.HasField("choice_delta"):
                chunk = encoder.choice(message.choice_delta)
            else:
                end = message.end
                chunk = encoder.finish(end.finish_reason, end.choice_finish_reasons)
                if end.HasField("usage"):
                    chunk += encoder.usage(end.usage.prompt_tokens, end.usage.completion_tokens)
                chunk += DONE
                ended = True
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not ended:
            raise RuntimeError("the gateway stream ended without StreamEnd")
