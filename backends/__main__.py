"""Run a sidecar: ``python -m backends --engine sim --listen 127.0.0.1:50061``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import orjson

from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from grpc_common.runtime import install_event_loop_policy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sim settings also come as one JSON object."""
    parser = argparse.ArgumentParser(prog="llmgw-sidecar", description=__doc__)
    parser.add_argument("--engine", choices=["sim"], default="sim")
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--model", default="sim", help="model name the engine serves")
    parser.add_argument(
        "--sim-config",
        default="{}",
        help='simulator settings as JSON, e.g. \'{"ttft_ms": 50, "itl_ms": 10}\'',
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    engine = SimEngine(SimConfig.model_validate(orjson.loads(args.sim_config)))
    sidecar = await start_sidecar(engine, args.listen)
    logging.getLogger("llmgw.sidecar").info(
        "sidecar serving model %s with engine %s on port %d", args.model, args.engine, sidecar.port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop(grace=2.0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``llmgw-sidecar`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    install_event_loop_policy()
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
