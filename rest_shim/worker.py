"""One shim process: build the app from the settings it is handed and serve it.

In its own module (not ``__main__``) so that ``spawn``ed worker processes can
import it. Settings travel as an argument, never through the environment.
"""

from __future__ import annotations

import socket

import uvicorn

from common.observability.logs import configure_logging
from common.observability.tracing import configure_tracing, shutdown_tracing
from rest_shim.app import create_app
from rest_shim.settings import ShimSettings


def uvicorn_config(settings: ShimSettings) -> uvicorn.Config:
    """uvicorn's settings for one shim process (the app is built here, not imported)."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # keep our JSON logging
    )


def run_worker(settings: ShimSettings, sockets: list[socket.socket] | None = None) -> None:
    """Serve on ``sockets`` (bound by the parent and shared by every worker) or, alone,
    on the configured host and port. Returns when uvicorn has shut down."""
    configure_logging("shim", settings.log_level)
    configure_tracing("llmgw-shim")
    try:
        uvicorn.Server(uvicorn_config(settings)).run(sockets=sockets)
    finally:
        shutdown_tracing()
