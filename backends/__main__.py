"""Run a sidecar: ``python -m backends --engine sim --listen 127.0.0.1:50061``.

With ``--engine vllm --vllm-url http://127.0.0.1:8000`` it fronts a vLLM
OpenAI-compatible server; it starts before vLLM is ready and reports
NOT_SERVING on grpc.health.v1 until vLLM's /health answers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from backends.engine import Engine
from backends.engines import registry
from backends.metered import MeteredEngine
from backends.server import start_sidecar
from backends.settings import SidecarSettings
from common.batching import StreamLimits
from common.grpcutil.runtime import install_event_loop_policy
from common.grpcutil.tls import server_tls
from common.observability.logs import configure_logging
from common.observability.metrics import serve_metrics
from common.observability.tracing import configure_tracing, shutdown_tracing
from common.settings import load_settings


def parse_settings(argv: list[str] | None = None) -> SidecarSettings:
    """Flags override LLMGW_SIDECAR_* variables, which override the defaults in SidecarSettings."""
    return load_settings(SidecarSettings, argv, "llmgw-sidecar", __doc__)


def build_engine(args: SidecarSettings) -> Engine:
    """The engine the settings name (via the engine registry); ValueError if invalid."""
    return registry.build_engine(
        args.engine, registry.engine_settings(args.engine, args, args.engine_config)
    )


async def serve(args: SidecarSettings, engine: Engine) -> None:
    """Serve until SIGINT or SIGTERM."""
    engine = MeteredEngine(engine, args.model or args.engine)  # metrics and the engine span
    if args.metrics_listen:
        host, port = args.metrics_listen.rsplit(":", 1)
        serve_metrics(host, int(port))
    sidecar = await start_sidecar(
        engine,
        args.listen,
        args.stream_interval_ms / 1000,
        max_hold_s=args.max_hold_ms / 1000,
        limits=StreamLimits(stall_timeout_s=args.stall_timeout_s),
        tls=server_tls(args.tls_cert, args.tls_key, args.tls_client_ca),
    )
    logging.getLogger("llmgw.sidecar").info(
        "sidecar serving model %s with engine %s on port %d",
        args.model or "(from engine)",
        args.engine,
        sidecar.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop(grace=args.shutdown_grace_s)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``llmgw-sidecar`` console script."""
    args = parse_settings(argv)
    configure_logging("sidecar", args.log_level)
    configure_tracing("llmgw-sidecar")
    # httpx logs every request at INFO: one line per health poll and per generation.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        engine = build_engine(args)
    except ValueError as error:
        sys.exit(f"llmgw-sidecar: {error}")
    install_event_loop_policy()
    try:
        asyncio.run(serve(args, engine))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
