"""Run the REST shim: ``python -m rest_shim --port 8080 --gateway 127.0.0.1:50051``."""

from __future__ import annotations

import argparse
import os

import uvicorn

from common.observability.logs import configure_logging
from common.observability.metrics import prepare_multiprocess, serve_metrics
from rest_shim.settings import ShimSettings


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``llmgw-shim`` console script."""
    parser = argparse.ArgumentParser(prog="llmgw-shim", description=__doc__)
    flags = ("--host", "--port", "--gateway", "--workers", "--max-body-bytes", "--log-level")
    for flag in (*flags, "--metrics-listen"):
        parser.add_argument(flag)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    settings = ShimSettings(**given)
    # Workers are separate processes that build the app from the environment.
    for name, value in settings.model_dump().items():
        os.environ[f"LLMGW_SHIM_{name.upper()}"] = str(value)
    configure_logging("shim", settings.log_level)
    if settings.workers > 1:
        prepare_multiprocess()  # before any worker imports prometheus-client
    if settings.metrics_listen:
        host, port = settings.metrics_listen.rsplit(":", 1)
        serve_metrics(host, int(port))
    uvicorn.run(
        "rest_shim.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # keep our JSON logging
    )


if __name__ == "__main__":
    main()
