"""Prometheus exposition for one process or a group of worker processes.

Several processes behind one port (gateway ``--workers``, uvicorn workers)
use prometheus-client's multiprocess mode: the parent points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker starts, every
worker writes its samples there, and the parent's /metrics sums them. A
single process needs none of that. /metrics is served on its own port,
never on the public REST port.
"""

from __future__ import annotations

import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess() -> str:
    """Create (or empty) the shared sample folder and export it to children.

    Must run in the parent before any worker imports metric definitions.
    """
    folder = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="llmgw-metrics-")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    # prometheus-client reads this variable, and only this, in every worker it runs in:
    # the one environment write left, made for the library, never for our settings.
    os.environ[MULTIPROC_ENV] = folder
    return folder


def serve_metrics(host: str, port: int) -> int:
    """Serve /metrics on ``host:port`` (0 picks a port); return the bound port."""
    # Imported here: prometheus-client reads MULTIPROC_ENV when first imported.
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as _multiprocess

    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight, queue depth) from the sums."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess as _multiprocess

        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
