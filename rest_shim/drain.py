"""Bounded shutdown of the shim (and reloading its HTTPS certificate).

On SIGTERM uvicorn stops accepting connections, closes idle ones and waits
for requests in flight, by default for as long as the longest stream (up to
the request timeout: ten minutes). ``ShimServer`` bounds that wait to
``shutdown_grace_s``: the app is marked draining at once (``/readyz`` says
503), requests finish if they can within the grace, and then uvicorn cancels
what is left. A stream cancelled that way ends with an explicit SSE error
event (``server_shutting_down``, retryable), never a silent cut; a whole
answer not yet started gets the same error as a 503. Connections still
sending headers or a body are closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rest_shim.errors import ApiError

log = logging.getLogger("llmgw.shim")

# What a request cut off by shutdown is told (SSE error event, or a 503 before a status).
SHUTTING_DOWN = ApiError(
    503,
    "The server is shutting down and cut this request off before it finished. Please retry.",
    "service_unavailable_error",
    code="server_shutting_down",
    retry_after_s=1,
)

# Cancelled tasks get this long to send their last event once the grace is over.
_LAST_WORDS_S = 1.0


def is_draining(scope: Scope) -> bool:
    """Whether the app serving ``scope`` is shutting down."""
    app = scope.get("app")
    return bool(getattr(getattr(app, "state", None), "draining", False))


class ShimServer(uvicorn.Server):
    """uvicorn.Server whose shutdown marks the app draining and is bounded by the config's
    ``timeout_graceful_shutdown``."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    _reload_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving; with HTTPS, also watch the certificate files."""
        await super().startup(sockets)
        if self.config.ssl is not None and self.config.ssl_certfile:
            self._reload_task = asyncio.create_task(self._reload_certificate())

    async def _reload_certificate(self, interval_s: float = 1.0) -> None:
        """Load the certificate again when its files change: new handshakes use it
        (SSLContext.load_cert_chain replaces the pair in place)."""
        config = self.config
        assert config.ssl is not None
        paths = [Path(str(p)) for p in (config.ssl_certfile, config.ssl_keyfile) if p]

        def stamp() -> tuple[tuple[int, int], ...]:
            return tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)

        seen = stamp()
        while True:
            await asyncio.sleep(interval_s)
            try:
                now = stamp()
                if now == seen:
                    continue
                config.ssl.load_cert_chain(
                    str(config.ssl_certfile),
                    str(config.ssl_keyfile) if config.ssl_keyfile else None,
                    config.ssl_keyfile_password,
                )
            except (OSError, ssl.SSLError) as error:
                log.error(
                    "HTTPS certificate not reloaded, still serving the previous one: %s", error
                )
                continue
            seen = now
            log.info("HTTPS certificate %s reloaded", config.ssl_certfile)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain for up to the grace, then cut off what is left with an explicit error."""
        if self._reload_task is not None:
            self._reload_task.cancel()
        self._on_drain()
        in_flight = len(self.server_state.tasks)
        if in_flight:
            log.info(
                "shutting down: %d requests in flight, grace %ss",
                in_flight,
                self.config.timeout_graceful_shutdown,
            )
        await super().shutdown(sockets)
        pending = [t for t in self.server_state.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=_LAST_WORDS_S)


class DrainMiddleware:
    """Pure ASGI: a request cancelled by the shutdown (a half-sent body, a whole answer
    still generating) gets a 503 if nothing was answered yet, and no traceback in
    the log. Streams say it themselves, in an SSE error event (asgi_responses)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; answer the shutdown's cancellation instead of raising it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not is_draining(scope):
                raise
            if not started:
                headers = [(b"content-type", b"application/json")]
                headers.extend((k.encode(), v.encode()) for k, v in SHUTTING_DOWN.headers().items())
                try:
                    await send({"type": "http.response.start", "status": 503, "headers": headers})
                    await send({"type": "http.response.body", "body": SHUTTING_DOWN.body()})
                except OSError:
                    pass  # the client is gone too
