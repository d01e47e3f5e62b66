"""Run the REST shim: ``python -m rest_shim --port 8080 --gateway 127.0.0.1:50051``.

With ``--workers N`` the parent binds the port once and starts N worker
processes that share the socket; each builds the app from the settings
object it is handed (no environment round trip).
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
from types import FrameType

from common.observability.logs import configure_logging
from common.observability.metrics import mark_worker_dead, prepare_multiprocess, serve_metrics
from common.settings import load_settings
from rest_shim.settings import ShimSettings


def bind(settings: ShimSettings, reuse_port: bool = False) -> socket.socket:
    """A listening socket on the shim's address.

    With ``reuse_port`` every worker gets a socket of its own on the same
    port (SO_REUSEPORT), and the kernel spreads new connections evenly over
    them. One shared socket lets whichever worker is in ``accept`` take a
    burst of connections: measured, all 100 of a load test's keep-alive
    connections on one of two workers (BENCHMARK.md).
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_workers(settings: ShimSettings) -> None:
    """Start ``settings.workers`` processes on one port; forward SIGINT/SIGTERM to them
    and return when all have stopped."""
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    sockets = [bind(settings, reuse_port) for _ in range(settings.workers if reuse_port else 1)]
    # spawn, not fork: a fresh interpreter per worker, as uvicorn's own supervisor does.
    context = multiprocessing.get_context("spawn")
    from rest_shim.worker import run_worker

    workers = [
        context.Process(
            target=run_worker, args=(settings, [sockets[i % len(sockets)]]), daemon=False
        )
        for i in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: each uvicorn drains on its own

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for worker in workers:
        worker.join()
        if worker.pid is not None:
            mark_worker_dead(worker.pid)
    for sock in sockets:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``llmgw-shim`` console script."""
    settings = load_settings(ShimSettings, argv, "llmgw-shim", __doc__)
    configure_logging("shim", settings.log_level)
    if settings.workers > 1:
        prepare_multiprocess()  # before any worker imports prometheus-client
    if settings.metrics_listen:
        host, port = settings.metrics_listen.rsplit(":", 1)
        serve_metrics(host, int(port))
    if settings.workers == 1:
        from rest_shim.worker import run_worker

        run_worker(settings)
    else:
        run_workers(settings)


if __name__ == "__main__":
    main()
