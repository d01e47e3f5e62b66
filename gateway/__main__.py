"""Run the gateway: ``python -m gateway --config config/gateway.yaml``.

With ``--workers N`` it runs N processes on one port (SO_REUSEPORT): the
kernel spreads connections over them, which scales past one core without
threads.
"""

from __future__ import annotations

import multiprocessing
import sys

from common.observability.logs import configure_logging
from common.observability.metrics import prepare_multiprocess, serve_metrics
from common.settings import load_settings
from gateway.config import ConfigError, load_config
from gateway.settings import GatewaySettings
from gateway.tenancy.runtime import check_tenants


def parse_settings(argv: list[str] | None = None) -> GatewaySettings:
    """Flags override LLMGW_GATEWAY_* variables, which override the defaults in GatewaySettings."""
    return load_settings(GatewaySettings, argv, "llmgw-gateway", __doc__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``llmgw-gateway`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("keys", "tenants", "usage"):
        from gateway.tenancy.cli import main as tenancy_cli

        raise SystemExit(tenancy_cli(args))
    settings = parse_settings(argv)
    configure_logging("gateway", settings.log_level)
    try:
        config = load_config(settings.config)
        check_tenants(settings, config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    if settings.workers > 1 and (
        settings.listen.endswith(":0") or settings.admin_listen.endswith(":0")
    ):
        raise SystemExit("--workers > 1 needs fixed ports: processes must share them")
    try:
        settings.worker_address(0)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if settings.workers > 1:
        # Before prometheus-client is imported anywhere: workers share samples.
        prepare_multiprocess()
    if settings.metrics_listen:
        host, port = settings.metrics_listen.rsplit(":", 1)
        serve_metrics(host, int(port))
    from gateway.worker import run_worker  # imports the metric definitions

    # spawn, not fork: gRPC's core threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=run_worker, args=(settings, config, index), daemon=True)
        for index in range(1, settings.workers)
    ]
    for child in children:
        child.start()

    def stop_children() -> None:
        for child in children:
            child.terminate()  # SIGTERM: each worker drains as this one does

    try:
        run_worker(settings, config, 0, stop_children)
    finally:
        stop_children()
        for child in children:
            child.join(settings.shutdown_grace_s + 10)


if __name__ == "__main__":
    main()
