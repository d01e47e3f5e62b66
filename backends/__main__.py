"""Run a sidecar: ``python -m backends --engine sim --listen 127.0.0.1:50061``.

With ``--engine vllm --vllm-url http://127.0.0.1:8000`` it fronts a vLLM
OpenAI-compatible server; it starts before vLLM is ready and reports
NOT_SERVING on grpc.health.v1 until vLLM's /health answers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson
from pydantic import ValidationError

from backends.engine import Engine
from backends.engines.sim import SimConfig, SimEngine
from backends.engines.vllm import VllmConfig, VllmEngine
from backends.metered import MeteredEngine
from backends.server import start_sidecar
from common.grpcutil.runtime import install_event_loop_policy
from common.observability.logs import configure_logging
from common.observability.metrics import serve_metrics
from common.observability.tracing import configure_tracing, shutdown_tracing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sim settings also come as one JSON object."""
    parser = argparse.ArgumentParser(prog="llmgw-sidecar", description=__doc__)
    parser.add_argument("--engine", choices=["sim", "vllm"], default="sim")
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument(
        "--model",
        default=None,
        help="model name the engine serves (vllm: its --served-model-name; "
        "learnt from vLLM's /v1/models when omitted)",
    )
    parser.add_argument(
        "--sim-config",
        default="{}",
        help='simulator settings as JSON, e.g. \'{"ttft_ms": 50, "itl_ms": 10}\'',
    )
    parser.add_argument("--vllm-url", help="vLLM's HTTP server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--vllm-capacity", type=int, default=256, help="vLLM's --max-num-seqs, for GetLoad"
    )
    parser.add_argument(
        "--metrics-listen", default="", help="host:port for Prometheus /metrics (off if empty)"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        default=0.0,
        help="hold deltas this long after each message so they go out merged (0: off; "
        "the first token is never held)",
    )
    args = parser.parse_args(argv)
    if args.engine == "vllm" and not args.vllm_url:
        parser.error("--engine vllm needs --vllm-url")
    return args


def build_engine(args: argparse.Namespace) -> Engine:
    """The engine the options name; raise ValueError with a readable message if invalid."""
    try:
        if args.engine == "vllm":
            return VllmEngine(
                VllmConfig(url=args.vllm_url, served_model=args.model, capacity=args.vllm_capacity)
            )
        return SimEngine(SimConfig.model_validate(orjson.loads(args.sim_config)))
    except orjson.JSONDecodeError as error:
        raise ValueError(f"--sim-config is not valid JSON: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"invalid {args.engine} engine settings: {problems}") from None


async def serve(args: argparse.Namespace, engine: Engine) -> None:
    """Serve until SIGINT or SIGTERM."""
    engine = MeteredEngine(engine, args.model or args.engine)  # metrics and the engine span
    if args.metrics_listen:
        host, port = args.metrics_listen.rsplit(":", 1)
        serve_metrics(host, int(port))
    sidecar = await start_sidecar(engine, args.listen, args.stream_interval_ms / 1000)
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
    await sidecar.stop(grace=2.0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``llmgw-sidecar`` console script."""
    args = parse_args(argv)
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
