"""Wiring every gRPC server shares: health service, reflection, socket options."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# SO_REUSEPORT lets several processes serve one port; keepalive pings keep
# idle long streams alive behind NATs and detect dead peers.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # One channel carries many concurrent streams; do not cap them at 100.
    ("grpc.http2.max_concurrent_streams", 10_000),
    # Receive windows stay at HTTP/2's 64 KiB instead of growing to the measured
    # bandwidth-delay product (MBs per stream): a stream whose reader is behind then
    # holds at most that much here, and backpressure reaches the sender at once.
    # Tokens are small; 64 KiB a round trip is far more than any stream's rate.
    ("grpc.http2.bdp_probe", 0),
)


# Service config for clients of a replicated service: spread calls over every
# address the target resolves to (a headless Service's pods, or `ipv4:A,B`),
# instead of gRPC's default pick_first (one connection, one replica). With a
# dns:/// target gRPC re-resolves when a connection closes; servers that set
# grpc.max_connection_age_ms make clients pick up new replicas over time.
ROUND_ROBIN = '{"loadBalancingConfig": [{"round_robin": {}}]}'


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Serve grpc.health.v1 (all services SERVING) and server reflection."""
    names = list(service_names)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, service_names: Iterable[str]) -> None:
    """Mark the server ('') and each named service SERVING."""
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in service_names:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
