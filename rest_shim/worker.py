"""One shim process: build the app from the settings it is handed and serve it.

In its own module (not ``__main__``) so that ``spawn``ed worker processes can
import it. Settings travel as an argument, never through the environment.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from common.observability.logs import configure_logging
from common.observability.tracing import configure_tracing, shutdown_tracing
from rest_shim.app import create_app
from rest_shim.drain import ShimServer
from rest_shim.http_protocol import ConnectionLimits, guarded_protocol
from rest_shim.settings import ShimSettings


def uvicorn_config(settings: ShimSettings, app: FastAPI) -> uvicorn.Config:
    """uvicorn's settings for one shim process (the app is built here, not imported)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guarded_protocol(connection_limits(settings)),  # httptools with limits
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        ssl_certfile=settings.tls_cert,  # HTTPS when set; ShimServer reloads it on change
        ssl_keyfile=settings.tls_key,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # keep our JSON logging
    )


def connection_limits(settings: ShimSettings) -> ConnectionLimits:
    """Header limits and slow-client timeouts from the settings."""
    return ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
    )


def shim_server(settings: ShimSettings) -> ShimServer:
    """The app and its server, whose shutdown marks the app draining and is bounded."""
    app = create_app(settings)

    def drain() -> None:
        app.state.draining = True

    return ShimServer(uvicorn_config(settings, app), drain)


def run_worker(settings: ShimSettings, sockets: list[socket.socket] | None = None) -> None:
    """Serve on ``sockets`` (bound by the parent and shared by every worker) or, alone,
    on the configured host and port. Returns when uvicorn has shut down."""
    configure_logging("shim", settings.log_level)
    configure_tracing("llmgw-shim")
    try:
        shim_server(settings).run(sockets=sockets)
    finally:
        shutdown_tracing()
