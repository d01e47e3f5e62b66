"""A cheap OpenAI-compatible upstream for benchmarks: ``python -m bench.mock_openai``.

It answers what the sidecar's ``vllm`` engine (and a LiteLLM proxy) ask of a
vLLM server: ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (vLLM's
running/waiting gauges) and ``POST /v1/chat/completions``, streamed as
vLLM streams it (one ``chat.completion.chunk`` per token with continuous
usage, a finish chunk, a usage chunk, ``[DONE]``; chunked HTTP/1.1,
keep-alive) or whole. Tokens come at a fixed pace: ``--ttft-ms`` to the
first, ``--itl-ms`` between the others (a real model's pace by default:
50 ms and 10 ms), or with no delay at all.

It is built to cost little per token (a raw asyncio protocol, every chunk's
bytes prepared once), so that in a benchmark the CPU goes to the hops
measured, not to the upstream; its own CPU is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from functools import cache

import orjson

from common.grpcutil.runtime import install_event_loop_policy

WORDS = ("the", "gateway", "streams", "tokens", "from", "a", "mock", "model")
PROMPT_TOKENS = 16


class Upstream:
    """The served model and its pace; prepares every chunk's bytes once."""

    def __init__(self, model: str, ttft_s: float, itl_s: float) -> None:
        self.model = model
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.running = 0
        self._head = (
            b'{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":['
        )

    @staticmethod
    def word(i: int) -> str:
        """Token i: words, the first bare and the others after a space (as the sim engine)."""
        word = WORDS[i % len(WORDS)]
        return word if i == 0 else " " + word

    @cache  # noqa: B019 - one Upstream per process; the cache is the point
    def token_chunk(self, i: int) -> bytes:
        """The framed HTTP chunk of token i (SSE event with continuous usage)."""
        usage = _usage(i + 1)
        data = (
            self._head
            + b'{"index":0,"delta":{"content":'
            + orjson.dumps(self.word(i))
            + b'},"logprobs":null,"finish_reason":null}],"usage":'
            + usage
            + b"}"
        )
        return _frame(b"data: " + data + b"\n\n")

    @cache  # noqa: B019
    def tail(self, tokens: int, include_usage: bool) -> bytes:
        """Finish chunk, usage chunk (when asked), [DONE] and the end of the chunked body."""
        finish = (
            self._head
            + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}],"usage":'
            + _usage(tokens)
            + b"}"
        )
        events = b"data: " + finish + b"\n\n"
        if include_usage:
            events += b"data: " + self._head + b'],"usage":' + _usage(tokens) + b"}\n\n"
        return _frame(events + b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def whole(self, tokens: int) -> bytes:
        """A non-streamed chat.completion body."""
        return orjson.dumps(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(self.word(i) for i in range(tokens)),
                        },
                        "finish_reason": "length",
                    }
                ],
                "usage": orjson.loads(_usage(tokens)),
            }
        )


def _usage(completion: int) -> bytes:
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        PROMPT_TOKENS,
        PROMPT_TOKENS + completion,
        completion,
    )


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n".encode()
        + b"content-type: "
        + content_type
        + b"\r\n\r\n"
        + body
    )


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


class MockProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests are answered in order."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.task: asyncio.Task[None] | None = None
        self.queue: list[tuple[bytes, bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()  # the client went away: stop "generating"

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else None])
            if len(self.buffer) < end + 4 + length:
                return  # the body is not all here yet
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = head.split(b" ", 2)[:2]
            self.queue.append((method, path, body))
        if self.queue and (self.task is None or self.task.done()):
            self.task = asyncio.get_running_loop().create_task(self._serve_queue())

    async def _serve_queue(self) -> None:
        while self.queue:
            method, path, body = self.queue.pop(0)
            await self._answer(method, path.split(b"?", 1)[0], body)

    async def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        transport, upstream = self.transport, self.upstream
        assert transport is not None
        if method == b"GET" and path == b"/health":
            transport.write(_response("200 OK", b"text/plain", b""))
        elif method == b"GET" and path == b"/v1/models":
            models = {"object": "list", "data": [{"id": upstream.model, "object": "model"}]}
            transport.write(_response("200 OK", b"application/json", orjson.dumps(models)))
        elif method == b"GET" and path == b"/metrics":
            text = (
                f'vllm:num_requests_running{{model_name="{upstream.model}"}} {upstream.running}\n'
                f'vllm:num_requests_waiting{{model_name="{upstream.model}"}} 0\n'
            )
            transport.write(_response("200 OK", b"text/plain", text.encode()))
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            await self._chat(orjson.loads(body))
        else:
            error = orjson.dumps({"error": {"message": "not found", "type": "NotFound"}})
            transport.write(_response("404 Not Found", b"application/json", error))

    async def _chat(self, request: dict[str, object]) -> None:
        transport, upstream = self.transport, self.upstream
        assert transport is not None
        tokens = request.get("max_tokens") or request.get("max_completion_tokens") or 16
        assert isinstance(tokens, int)
        upstream.running += 1
        try:
            if upstream.ttft_s:
                await asyncio.sleep(upstream.ttft_s)
            if not request.get("stream"):
                if upstream.itl_s:
                    await asyncio.sleep(upstream.itl_s * (tokens - 1))
                transport.write(_response("200 OK", b"application/json", upstream.whole(tokens)))
                return
            options = request.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            write, itl, chunk = transport.write, upstream.itl_s, upstream.token_chunk
            write(_STREAM_HEAD + chunk(0))
            for i in range(1, tokens):
                if itl:
                    await asyncio.sleep(itl)
                elif i % 16 == 0:
                    await asyncio.sleep(0)  # zero delay: still let other streams run
                write(chunk(i))
            write(upstream.tail(tokens, include_usage))
        finally:
            upstream.running -= 1


async def serve(host: str, port: int, upstream: Upstream) -> None:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(upstream), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock OpenAI upstream on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.mock_openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="mock")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    install_event_loop_policy()
    upstream = Upstream(args.model, args.ttft_ms / 1000, args.itl_ms / 1000)
    asyncio.run(serve(args.host, args.port, upstream))


if __name__ == "__main__":
    main()
