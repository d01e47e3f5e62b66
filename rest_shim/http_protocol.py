"""uvicorn's httptools protocol with limits on headers and on slow clients.

httptools (llhttp) has no header limit of its own and uvicorn adds none: a
client could send 64 MB of headers, without a key, and the shim kept them
all. Nor does uvicorn time out a connection that never finishes its headers
or its body. This subclass adds, per connection:

* ``max_header_bytes`` (request line and headers) and ``max_headers``
  (fields): beyond either, ``431 Request Header Fields Too Large`` and the
  connection is closed. Bytes are counted as they arrive, so a header that
  never ends is cut off at the limit, not buffered.
* ``header_timeout_s``: from the connection's first byte (or its opening, for
  one that sends nothing) to the end of the headers; then ``408``.
* ``body_timeout_s``: from the end of the headers to the end of the body
  (a half-sent body); then ``408`` if no response was started, and close.

Idle keep-alive connections are uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


@dataclass(frozen=True)
class ConnectionLimits:
    """Limits applied to every HTTP connection of the shim."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request we refuse."""


_IDLE, _HEADERS, _BODY, _APP = range(4)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header limits and header/body timeouts (``limits``)."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._header_bytes = 0  # raw bytes received during the header phase
        self._header_fields = 0
        self._exact_bytes = 0  # request line and header fields, as parsed
        self._timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    # Phases and timers

    def _start_timer(self, seconds: float, status: int, message: str) -> None:
        self._stop_timer()
        self._timer = self.loop.call_later(seconds, self._expire, status, message)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, status: int, message: str) -> None:
        self._timer = None
        cycle = self.cycle if self._phase == _BODY else None
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        self._refuse_now(status, message)

    def _begin_headers(self) -> None:
        self._phase = _HEADERS
        self._header_bytes = 0
        self._header_fields = 0
        self._start_timer(
            self.limits.header_timeout_s, 408, "Request headers not received in time."
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock on the first request's headers."""
        super().connection_made(transport)
        self._begin_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop our timer with the connection."""
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count header bytes as they arrive; refuse once over the limit."""
        if self._refusal is not None:
            return
        if self._phase == _IDLE:
            self._begin_headers()
        if self._phase == _HEADERS:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._phase == _HEADERS and self._header_bytes > self.limits.max_header_bytes:
            self._refuse_now(431, "Request header fields too large.")

    # Parser callbacks

    def on_url(self, url: bytes) -> None:
        """Also counts toward the header size."""
        super().on_url(url)
        self._check_size(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Counts fields and bytes exactly (data_received's count includes any body)."""
        self._header_fields += 1
        if self._header_fields > self.limits.max_headers:
            most = self.limits.max_headers
            self._refusal = (431, f"Too many request header fields (at most {most}).")
            raise _Refused
        super().on_header(name, value)
        self._check_size(len(name) + len(value) + 4)

    def _check_size(self, size: int) -> None:
        self._exact_bytes += size
        if self._exact_bytes > self.limits.max_header_bytes:
            self._refusal = (431, "Request header fields too large.")
            raise _Refused

    def on_message_begin(self) -> None:
        """A new request: its header bytes count from zero."""
        super().on_message_begin()
        self._exact_bytes = 0

    def on_headers_complete(self) -> None:
        """Headers are in: the body's clock starts."""
        self._phase = _BODY
        self._start_timer(self.limits.body_timeout_s, 408, "Request body not received in time.")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in; the app answers in its own time."""
        answered = self.cycle is not None and self.cycle.response_complete
        self._phase = _IDLE if answered else _APP
        self._stop_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Back to idle once the request is in too; uvicorn's keep-alive timeout applies
        until the next one. (Answered early, say 413 or 401, the rest of its body is
        still read and dropped, under the body timeout.)"""
        if self._phase != _BODY:
            self._phase = _IDLE
            self._stop_timer()
        super().on_response_complete()

    # Refusals

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; ours when a callback refused the request."""
        if self._refusal is not None:
            status, message = self._refusal
            self._refusal = None
            self._refuse_now(status, message)
            return
        super().send_400_response(msg)

    def _refuse_now(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        self._stop_timer()
        if self.transport.is_closing():
            return
        body = message.encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: ",
                    str(len(body)).encode(),
                    b"\r\nconnection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn should use (``Config(http=...)``) for ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
