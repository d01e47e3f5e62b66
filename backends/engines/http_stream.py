"""A lean streaming HTTP/1.1 client: keep-alive pool, one asyncio protocol per connection.

The sidecar's ``vllm`` engine relays every token of every stream through
this client, so its per-chunk cost is the sidecar's per-token cost. httpx
(over httpcore, h11 and anyio) spends tens of microseconds per chunk in
cancel scopes, stream wrappers and its pure-Python HTTP parser; here a
chunk is parsed by httptools (C, the parser uvicorn uses) in the
protocol's ``data_received`` and handed to the reader as the bytes object
the parser produced, waking it through one future. Nothing else per
chunk: no timer (idle streams are found by one sweep a second per pool),
no task.

Backpressure: a reader that falls behind stops the socket being read
(``pause_reading`` past ``HIGH_WATER`` unread bytes), so TCP flow control
slows the server instead of this process buffering. Closing a response
before its end closes its connection, which is how the server learns the
client is gone (vLLM then aborts the request).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # unread response bytes before the socket stops being read


class HttpStreamError(Exception):
    """The connection failed or broke, or the server's answer is not HTTP."""


class ConnectFailed(HttpStreamError):
    """No connection could be made (refused, unreachable, timed out)."""


class IdleTimeout(HttpStreamError):
    """The server sent nothing on an open response for the idle timeout."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.received = False  # any byte of the current response
        self.error: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.last_data = self._loop.time()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.last_data = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(HttpStreamError(f"the server's answer is not valid HTTP: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(HttpStreamError(f"the connection closed mid-answer ({exc!r})"))

    # -- httptools callbacks -----------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # Asked now: once the message is complete the parser no longer knows.
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- the reader's side -------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    async def wait(self) -> None:
        """Until the parser has something new (headers, body, end) or the connection failed."""
        self.waiter = self._loop.create_future()
        await self.waiter

    def close(self) -> None:
        """Close the socket (the server sees the client leave)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class StreamResponse:
    """A response whose headers are in; read its body with ``next_chunk``, then ``close``."""

    __slots__ = ("_conn", "_pool", "status")

    def __init__(self, pool: HttpStreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call (waiting for some); None at the end."""
        conn = self._conn
        while not conn.chunks:
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return None
            await conn.wait()
        chunks = conn.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        conn.buffered = 0
        if conn.paused and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while (data := await self.next_chunk()) is not None:
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Back to the pool if the response was read to its end, else close the connection."""
        self._pool._release(self._conn)


class HttpStreamPool:
    """Keep-alive HTTP/1.1 connections to one origin (``http://host:port`` or https)."""

    def __init__(
        self,
        base_url: str,
        max_connections: int = 1024,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 300.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc.encode()
        self._head_tail = b" HTTP/1.1\r\nhost: " + host_header + b"\r\n"
        self._max = max_connections
        self._connect_timeout = connect_timeout_s
        self._idle_timeout = idle_timeout_s
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.Task[None] | None = None

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> StreamResponse:
        """Send a request; return once the response's headers are in."""
        head = (
            method.encode()
            + b" "
            + (self._prefix + path).encode()
            + self._head_tail
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
            + b"content-length: %d\r\n\r\n" % len(body)
        )
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            assert conn.transport is not None
            conn.transport.write(head + body)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait()
            except HttpStreamError:
                self._release(conn)
                # A kept-alive connection the server had just closed: the request never
                # reached it, so it is safe to send once more on a fresh one.
                if reused and not conn.received and attempt == 0:
                    continue
                raise
            except BaseException:
                self._release(conn)
                raise
            return StreamResponse(self, conn)
        raise AssertionError("unreachable")

    async def _acquire(self) -> tuple[_Connection, bool]:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    conn._reset()
                    self._busy.add(conn)
                    return conn, True
            if len(self._busy) < self._max:
                return await self._connect(), False
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        placeholder = _Connection(loop)  # holds the slot while connecting
        self._busy.add(placeholder)
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except (OSError, TimeoutError) as error:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {error!r}") from None
        finally:
            self._busy.discard(placeholder)
        self._busy.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if conn.complete and conn.keep_alive and not conn.closed and conn.error is None:
            self._idle.append(conn)
        else:
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def _sweep(self) -> None:
        """Once a second: fail responses whose server has been silent for the idle timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self._idle_timeout / 2))
            now = loop.time()
            for conn in list(self._busy):
                if not conn.complete and now - conn.last_data > self._idle_timeout:
                    conn._fail(IdleTimeout(f"nothing for {self._idle_timeout:g}s"))
                    conn.close()

    async def close(self) -> None:
        """Close every connection (open responses fail)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
