"""Load generator worker: one process, one event loop, many concurrent streams.

The orchestrator (``bench.run_bench``) starts a few of these processes and
hands each a :class:`Job` over a pipe. A worker opens its connections, says
``"ready"``, waits for a common start time, then keeps ``job.concurrency``
streams busy back to back: a warm-up, a measured window, and a drain in
which in-flight requests finish but no new ones start.

Per-request client work is kept as small as possible so the client does not
become the bottleneck: request bytes are built once per job, gRPC responses
are deserialised only for deltas, to count their tokens (the oneof field's
tag byte tells a delta from the end),
and the HTTP client is a bare asyncio HTTP/1.1 keep-alive reader that
counts SSE content events with ``bytes.count``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc
import orjson

from llmgw.backend.v1 import backend_pb2
from llmgw.v1 import chat_pb2

# Targets of a job.
DIRECT = "direct"
GATEWAY = "gateway"
SHIM = "shim"
UPSTREAM = "upstream"  # the OpenAI-compatible server behind the sidecar's vllm engine
LITELLM = "litellm"  # a LiteLLM proxy in front of that same server
HTTP_TARGETS = frozenset({SHIM, UPSTREAM, LITELLM})  # OpenAI SSE over HTTP/1.1

# First byte of a serialised oneof event: (field number << 3) | 2 (length-delimited).
# A proto3 message whose oneof is set always starts with that field, even an empty one.
_SIDECAR_DELTA, _SIDECAR_END = 0x0A, 0x12  # GenerateResponse: delta = 1, finished = 2
_CHAT_DELTA, _CHAT_END = 0x12, 0x1A  # StreamChatCompletionResponse: delta = 2, end = 3

# What a content chunk of the shim holds, and what ends a good stream.
_SSE_CONTENT = b'"delta":{"content":'
_SSE_ERROR = b'data: {"error"'
_SSE_DONE = b"data: [DONE]\n\n"
# Bytes kept from one HTTP chunk to the next so a pattern split over two chunks
# is still seen; one less than the pattern so a match is never counted twice.
_CARRY = len(_SSE_CONTENT) - 1

_ERROR_SAMPLES = 5


# Deltas may hold several tokens: the sidecar and the gateway merge tokens that
# were produced while the previous message was still being written. The sim
# engine's tokens are words, the first bare and the others with one leading
# space, so the tokens in a piece of text are its spaces, plus one for the
# stream's first piece.
def _sidecar_tokens(message: bytes, first: bool) -> int:
    return backend_pb2.GenerateResponse.FromString(message).delta.token_count


def _chat_tokens(message: bytes, first: bool) -> int:
    text = chat_pb2.StreamChatCompletionResponse.FromString(message).delta.content
    return text.count(" ") + first


def _sse_tokens(data: bytes, first: bool) -> int:
    """Tokens in the content deltas of one HTTP chunk (whole SSE events)."""
    tokens = 0
    at = data.find(_SSE_CONTENT)
    while at >= 0:
        begin = at + len(_SSE_CONTENT) + 1  # past the opening quote
        end = data.index(b'"}', begin)
        tokens += data.count(b" ", begin, end) + first
        first = False
        at = data.find(_SSE_CONTENT, end)
    return tokens


@dataclass(frozen=True)
class Job:
    """One worker's share of one benchmark run."""

    target: str
    address: str
    model: str
    prompt: str
    max_tokens: int
    concurrency: int  # streams this worker keeps busy
    first_stream: int  # global index of its first stream, for staggered starts
    total_streams: int  # streams over all workers
    warmup_s: float
    duration_s: float


@dataclass
class WorkerResult:
    """What one worker saw; the orchestrator merges these across workers."""

    completed: int = 0  # good requests that finished inside the measured window
    ttfts: list[float] = field(default_factory=list)  # seconds, of those requests
    # Output tokens that arrived inside the window, whatever request they belong to:
    # unlike completions, this does not jump by whole requests when they are long.
    window_tokens: int = 0
    total_finished: int = 0  # good requests over warm-up, window and drain
    short: int = 0  # finished properly but with another number of tokens than asked
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)


class _Recorder:
    """Accumulates one worker's results; keeps the per-request path short."""

    __slots__ = ("end", "expected", "result", "start")

    def __init__(self, expected: int, start: float, end: float) -> None:
        self.expected = expected
        self.start = start
        self.end = end
        self.result = WorkerResult()

    def finished(self, began: float, first: float, done: float, tokens: int) -> None:
        result = self.result
        result.total_finished += 1
        if tokens != self.expected:
            result.short += 1
        if self.start <= done < self.end:
            result.completed += 1
            if tokens:
                result.ttfts.append(first - began)

    def error(self, kind: str, detail: str) -> None:
        result = self.result
        result.errors[kind] += 1
        if len(result.error_samples) < _ERROR_SAMPLES:
            result.error_samples.append(f"{kind}: {detail}"[:300])


def _sidecar_request(job: Job) -> bytes:
    # One fixed request id for all: the sidecar only uses it in its logs.
    return backend_pb2.GenerateRequest(
        request_id="bench",
        model=job.model,
        messages=[backend_pb2.Message(role=backend_pb2.ROLE_USER, content=job.prompt)],
        sampling=backend_pb2.SamplingParams(max_tokens=job.max_tokens),
    ).SerializeToString()


def _chat_request(job: Job) -> bytes:
    return chat_pb2.StreamChatCompletionRequest(
        params=chat_pb2.ChatCompletionParams(
            model=job.model,
            messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=job.prompt)],
            max_tokens=job.max_tokens,
        )
    ).SerializeToString()


def _http_request(job: Job) -> bytes:
    body = orjson.dumps(
        {
            "model": job.model,
            "messages": [{"role": "user", "content": job.prompt}],
            "stream": True,
            "max_tokens": job.max_tokens,
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {job.address}\r\n"
        "Authorization: Bearer sk-bench\r\n"  # the shim (and LiteLLM) refuse keyless calls
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _grpc_stream_loop(
    call: grpc.aio.UnaryStreamMultiCallable,
    request: bytes,
    delta_tag: int,
    end_tag: int,
    count_tokens: Callable[[bytes, bool], int],
    recorder: _Recorder,
) -> None:
    """Send requests one after another on a shared channel until the window ends."""
    now = time.monotonic
    start, end = recorder.start, recorder.end
    while (began := now()) < end:
        first = 0.0
        tokens = 0
        in_window = 0
        ended = False
        try:
            async for message in call(request):
                tag = message[0]
                if tag == delta_tag:
                    arrived = now()
                    if not tokens:
                        first = arrived
                    count = count_tokens(message, not tokens)
                    tokens += count
                    if start <= arrived < end:
                        in_window += count
                elif tag == end_tag:
                    ended = True
        except grpc.aio.AioRpcError as error:
            recorder.error(f"grpc {error.code().name}", str(error.details()))
            await asyncio.sleep(0.01)  # do not spin on a target that fails at once
            continue
        except Exception as error:  # e.g. an empty message: count it, keep the stream going
            recorder.error(type(error).__name__, repr(error))
            await asyncio.sleep(0.01)
            continue
        finally:
            recorder.result.window_tokens += in_window
        if ended:
            recorder.finished(began, first, now(), tokens)
        else:
            recorder.error("no end event", f"status OK after {tokens} deltas")


class _HttpError(Exception):
    """A response that is not a good SSE stream."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bool, int, bool]:
    """Status, chunked?, content length, and whether the server will close the connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    chunked = b"\r\ntransfer-encoding: chunked" in head
    close = b"\r\nconnection: close" in head
    length = 0
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
    return status, chunked, length, close


async def _read_body(reader: asyncio.StreamReader, chunked: bool, length: int) -> bytes:
    """The whole body of a response that is not a stream (an error), to report it."""
    if not chunked:
        return await reader.readexactly(length)
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
    await reader.readuntil(b"\r\n")
    return b"".join(parts)


async def _http_stream_loop(
    host: str,
    port: int,
    request: bytes,
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    recorder: _Recorder,
) -> None:
    """Send requests one after another on one keep-alive connection until the window ends."""
    now = time.monotonic
    start, end = recorder.start, recorder.end
    while (began := now()) < end:
        in_window = 0
        try:
            if connection is None:
                connection = await asyncio.open_connection(host, port)
            reader, writer = connection
            writer.write(request)
            status, chunked, length, close = await _read_head(reader)
            if status != 200 or not chunked:
                body = await _read_body(reader, chunked, length)
                kind = f"http {status}" if status != 200 else "http not chunked"
                raise _HttpError(kind, repr(body[:200]))
            tokens = 0
            first = 0.0
            carry = b""
            failed = False
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # end of the (empty) trailer
                    break
                data = carry + (await reader.readexactly(size + 2))[:-2]
                count = _sse_tokens(data, not tokens) if _SSE_CONTENT in data else 0
                if count:
                    arrived = now()
                    if not tokens:
                        first = arrived
                    tokens += count
                    if start <= arrived < end:
                        in_window += count
                if _SSE_ERROR in data:
                    failed = True
                carry = data[-_CARRY:]
            if close:
                writer.close()
                connection = None
            if failed:
                raise _HttpError("sse error event", repr(carry))
            if not carry.endswith(_SSE_DONE):
                raise _HttpError("no [DONE]", f"the stream ended after {tokens} tokens")
            recorder.finished(began, first, now(), tokens)
        except Exception as error:  # a bad response must not end this stream's loop
            kind = error.kind if isinstance(error, _HttpError) else type(error).__name__
            recorder.error(kind, str(error))
            if connection is not None:
                connection[1].close()
                connection = None
            await asyncio.sleep(0.01)  # do not spin on a target that fails at once
        finally:
            recorder.result.window_tokens += in_window
    if connection is not None:
        connection[1].close()


async def _run_job(job: Job, conn: Connection) -> WorkerResult:
    """Connect, report ready, wait for the common start time, then run the load."""
    host, port = job.address.rsplit(":", 1)
    channel: grpc.aio.Channel | None = None
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
    if job.target in HTTP_TARGETS:
        # Open every connection before the start so connecting is not measured.
        for _ in range(job.concurrency):
            connections.append(await asyncio.open_connection(host, int(port)))
    else:
        channel = grpc.aio.insecure_channel(job.address)
        await asyncio.wait_for(channel.channel_ready(), 10)
    conn.send("ready")
    start_at: float = conn.recv()  # time.monotonic() is one clock for all processes
    window_start = start_at + job.warmup_s
    recorder = _Recorder(job.max_tokens, window_start, window_start + job.duration_s)

    if job.target in HTTP_TARGETS:
        request = _http_request(job)
        loops = [
            _http_stream_loop(host, int(port), request, connection, recorder)
            for connection in connections
        ]
    else:
        assert channel is not None
        if job.target == DIRECT:
            method, request = "/llmgw.backend.v1.BackendService/Generate", _sidecar_request(job)
            tags = (_SIDECAR_DELTA, _SIDECAR_END, _sidecar_tokens)
        else:
            method, request = "/llmgw.v1.ChatService/StreamChatCompletion", _chat_request(job)
            tags = (_CHAT_DELTA, _CHAT_END, _chat_tokens)
        # No (de)serialisers: requests go as prepared bytes, responses come back as bytes.
        call = channel.unary_stream(method)
        loops = [_grpc_stream_loop(call, request, *tags, recorder) for _ in range(job.concurrency)]
    # Streams start spread over the warm-up: started together, long requests would stay
    # in lockstep and finish in bursts, so completions in the window would jump by
    # whole batches.
    step = job.warmup_s / job.total_streams
    starts = [start_at + step * (job.first_stream + i) for i in range(job.concurrency)]
    try:
        await asyncio.gather(*(_at(when, loop) for when, loop in zip(starts, loops, strict=True)))
    finally:
        if channel is not None:
            await channel.close()
    return recorder.result


async def _at(when: float, work: Coroutine[None, None, None]) -> None:
    """Run ``work`` once time.monotonic() reaches ``when``."""
    await asyncio.sleep(max(0.0, when - time.monotonic()))
    await work


def worker_main(conn: Connection) -> None:
    """Entry point of a load generator process: run jobs from ``conn`` until it sends None."""
    import uvloop  # the same loop as the servers: cheaper per event than asyncio's own

    async def serve() -> None:
        while True:
            job: Job | None = conn.recv()  # blocks the loop, but nothing else is running
            if job is None:
                return
            try:
                result = await _run_job(job, conn)
            except Exception as error:  # report, rather than leave the orchestrator waiting
                result = WorkerResult()
                result.errors[f"worker {type(error).__name__}"] += 1
                result.error_samples.append(repr(error)[:300])
            conn.send(result)

    uvloop.run(serve())
