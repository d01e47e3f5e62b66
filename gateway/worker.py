"""One gateway process: serve until told to stop.

In its own module (not ``__main__``) so that ``spawn``ed worker processes
can import it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from common.grpcutil.runtime import install_event_loop_policy
from common.grpcutil.tls import client_tls, server_tls
from common.observability.logs import configure_logging
from common.observability.tracing import configure_tracing, shutdown_tracing
from gateway.config import GatewayConfig
from gateway.server import start_gateway
from gateway.settings import GatewaySettings
from gateway.tenancy.runtime import tenancy_options

log = logging.getLogger("llmgw.gateway")


async def serve(
    settings: GatewaySettings,
    config: GatewayConfig,
    index: int = 0,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then drain (see RunningGateway.stop) for up
    to ``shutdown_grace_s``. ``on_stop`` runs when the signal arrives (the parent
    process passes the signal on to its workers, so all drain at once)."""
    own = settings.worker_address(index)
    gateway = await start_gateway(
        config,
        settings.listen,
        tenancy_options(settings),
        settings.admin_listen or None,
        routing_file=settings.config,
        extra_addresses=(own,) if own else (),
        tls=server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca),
        backend_tls=client_tls(
            settings.backend_tls_ca,
            settings.backend_tls_cert,
            settings.backend_tls_key,
            settings.backend_tls_server_name,
        ),
    )
    log.info("gateway serving %d models on port %d", len(config.models), gateway.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: up to %ss for requests in progress", settings.shutdown_grace_s)
    if on_stop is not None:
        on_stop()
    await gateway.stop(grace=settings.shutdown_grace_s)
    log.info("gateway stopped")


def run_worker(
    settings: GatewaySettings,
    config: GatewayConfig,
    index: int = 0,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Run one gateway process (the parent is worker 0, spawned workers 1...)."""
    configure_logging("gateway", settings.log_level)
    configure_tracing("llmgw-gateway")
    install_event_loop_policy()
    try:
        asyncio.run(serve(settings, config, index, on_stop))
    finally:
        shutdown_tracing()
