"""Wires the gateway: registry, backend client, tenancy, servicers, health, reflection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health as grpc_health

from common.batching import StreamLimits
from common.grpcutil.malformed import MalformedRequestInterceptor
from common.grpcutil.server import SERVER_OPTIONS, add_health_and_reflection, mark_serving
from common.grpcutil.tls import ClientTls, ServerTls, add_port
from common.observability.tracing import grpc_server_interceptors
from common.pace import LoopLagPace, PaceSettings
from gateway.adapters.backend_client import GrpcBackendClient
from gateway.adapters.monitor import EndpointMonitor
from gateway.adapters.resolver import Resolver, SystemResolver
from gateway.config import GatewayConfig, ResilienceConfig
from gateway.domain.resilience import ResiliencePolicy
from gateway.domain.service import ChatCompletionService
from gateway.routes import Routes
from gateway.routing.registry import ModelRegistry
from gateway.routing.retry_budget import RetryPolicy
from gateway.telemetry import (
    AccessLog,
    LimitsStateExporter,
    Observers,
    PrometheusObserver,
    count_rate_limit_refusal,
    count_usage_dropped,
    export_pace,
    export_routing_state,
)
from gateway.tenancy.runtime import Tenancy, TenancyOptions, build_tenancy
from gateway.transport.admin_servicer import AdminServicer
from gateway.transport.auth import AuthInterceptor
from gateway.transport.completions_servicer import CompletionServicer
from gateway.transport.drain import DrainInterceptor
from gateway.transport.embeddings_servicer import EmbeddingServicer
from gateway.transport.request_limits import RequestLimitsInterceptor
from gateway.transport.servicer import ChatServicer, ModelServicer
from gateway.transport.usage_servicer import UsageServicer
from llmgw.admin.v1 import admin_pb2, admin_pb2_grpc
from llmgw.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    completions_pb2,
    completions_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

log = logging.getLogger("llmgw.gateway")

# After the drain grace: how long ended streams get to finish their last write.
CUT_MARGIN_S = 5.0

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
# The public API's services (request list sizes are capped on these).
PUBLIC_SERVICES = (
    *(
        s.full_name
        for module in (chat_pb2, completions_pb2, embeddings_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
    ),
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
)


@dataclass(frozen=True)
class Registration:
    """A service the gateway serves: its proto descriptor and how to add it."""

    descriptor: ServiceDescriptor
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to ``server``."""
        self.add(self.servicer, server)


@dataclass
class RunningGateway:
    """A started gateway: its server, bound port and domain service."""

    server: grpc.aio.Server
    port: int
    service: ChatCompletionService
    backends: GrpcBackendClient
    monitor: EndpointMonitor
    routes: Routes
    tenancy: Tenancy | None = None
    admin_server: grpc.aio.Server | None = None
    admin_port: int | None = None
    pace: LoopLagPace | None = None
    # Every service registered on each server (the auth walk test reads them).
    services: tuple[ServiceDescriptor, ...] = field(default_factory=tuple)
    admin_services: tuple[ServiceDescriptor, ...] = field(default_factory=tuple)
    health: list[grpc_health.aio.HealthServicer] = field(default_factory=list)
    drain_gate: DrainInterceptor = field(default_factory=DrainInterceptor)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Drain, then stop. Readiness says NOT_SERVING at once and new calls are
        refused (UNAVAILABLE: retry elsewhere); streams in progress finish for up
        to ``grace`` seconds (None: however long), then end with an explicit
        error. Every request is settled and metered before the meter closes;
        usage the store cannot take is spooled. Then the health checks stop and
        the backend channels close."""
        for probes in self.health:
            await probes.enter_graceful_shutdown()
        # The server keeps taking calls during the grace, to refuse them with
        # UNAVAILABLE (gRPC's own stop answers new calls with CANCELLED).
        self.drain_gate.close()
        cut = await self.service.drain(grace)
        if cut:
            log.warning("drain: %d requests still running after %ss were ended", cut, grace)
        # Ended streams finish their last write; a handler blocked writing to a
        # client that reads nothing is cancelled after a short margin.
        margin = CUT_MARGIN_S if grace is None else min(CUT_MARGIN_S, max(grace, 0.5))
        servers = [self.server] if self.admin_server is None else [self.admin_server, self.server]
        await asyncio.gather(*(s.stop(margin) for s in servers))
        # A cancelled handler settles in its own task, after the server let it go.
        if not await self.service.wait_idle(CUT_MARGIN_S):
            log.error("drain: %d requests did not end; their usage is lost", self.service.in_flight)
        if self.pace is not None:
            await self.pace.close()
        if self.tenancy is not None:
            await self.tenancy.close()
        await self.routes.close()
        await self.monitor.stop()
        await self.backends.close()


async def start_gateway(
    config: GatewayConfig,
    address: str = "127.0.0.1:0",
    tenancy: TenancyOptions | None = None,
    admin_address: str | None = None,
    routing_file: Path | None = None,
    resolver: Resolver | None = None,
    extra_addresses: Sequence[str] = (),
    tls: ServerTls | None = None,
    backend_tls: ClientTls | None = None,
) -> RunningGateway:
    """Start a gateway serving ``config`` on ``address`` (port 0 picks one).

    ``tenancy`` None serves everyone without keys or limits (tests, trusted
    networks); otherwise API keys, rate limits and metering are enforced.
    ``admin_address`` serves the AdminService on a port of its own (and not
    on ``address``), so deployments publish the API without the admin surface;
    None keeps it on the API port. ``routing_file`` (where ``config`` came
    from) is watched and reloaded on change or SIGHUP; endpoint host names are
    resolved with ``resolver`` (the system's by default) and re-resolved.
    """
    backends = GrpcBackendClient(backend_tls)
    registry = ModelRegistry(())
    # What the monitor exports after each health round (the limiter's state joins below).
    exporters: list[Callable[[], None]] = [lambda: export_routing_state(registry)]

    def export_state() -> None:
        for export in exporters:
            export()

    monitor = EndpointMonitor((), backends, config.resilience.health, after_round=export_state)
    discovery = config.discovery
    routes = Routes(
        registry,
        monitor,
        backends,
        resolver or SystemResolver(discovery.family, discovery.timeout_s),
        routing_file,
    )
    await routes.apply(config)  # resolves host names; the monitor learns the endpoints
    streaming = config.resilience.streaming
    pace = None
    if streaming.max_hold_ms > 0:
        hold_s = streaming.max_hold_ms / 1000
        pace = LoopLagPace(
            PaceSettings(max_hold_s=hold_s, min_hold_s=min(0.010, hold_s)), on_step=export_pace
        )
    tenants = (
        build_tenancy(tenancy, registry, address, count_rate_limit_refusal, count_usage_dropped)
        if tenancy is not None
        else None
    )
    service = ChatCompletionService(
        registry,
        backends,
        resilience_policy(config.resilience),
        observer=Observers(PrometheusObserver(), AccessLog()),
        pace=pace,
        limits=StreamLimits(
            max_buffered=streaming.max_buffered_chars,
            max_batch=streaming.max_message_chars,
            stall_timeout_s=streaming.stall_timeout_s,
        ),
        admission=tenants.admission if tenants is not None else None,
    )
    if tenants is not None:
        exporters.append(LimitsStateExporter(tenants.limiter))
    # Tracing first (outermost), so refusals are traced too. Then the drain gate
    # (UNAVAILABLE for new calls once a drain began). Then authentication,
    # before anything parses the request: a caller without a key costs no decoding.
    # It is installed with or without a tenant file: the access table decides.
    # Then cheap refusals that look at no item: undecodable bytes, over-long lists.
    drain_gate = DrainInterceptor()
    interceptors = [
        *grpc_server_interceptors(),
        drain_gate,
        AuthInterceptor(tenants.directory.authenticate if tenants is not None else None),
        MalformedRequestInterceptor(),
        RequestLimitsInterceptor(PUBLIC_SERVICES, config.request_limits.max_list_items),
    ]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    registrations = [
        Registration(
            _service(chat_pb2, "ChatService"),
            chat_pb2_grpc.add_ChatServiceServicer_to_server,
            ChatServicer(service),
        ),
        Registration(
            _service(chat_pb2, "ModelService"),
            chat_pb2_grpc.add_ModelServiceServicer_to_server,
            ModelServicer(service, int(time.time())),
        ),
        Registration(
            _service(completions_pb2, "CompletionService"),
            completions_pb2_grpc.add_CompletionServiceServicer_to_server,
            CompletionServicer(service),
        ),
        Registration(
            _service(embeddings_pb2, "EmbeddingService"),
            embeddings_pb2_grpc.add_EmbeddingServiceServicer_to_server,
            EmbeddingServicer(service),
        ),
    ]
    if tenants is not None:
        registrations.append(
            Registration(
                _service(usage_pb2, "UsageService"),
                usage_pb2_grpc.add_UsageServiceServicer_to_server,
                UsageServicer(tenants.usage),
            )
        )
    admin = Registration(
        _service(admin_pb2, "AdminService"),
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
        AdminServicer(registry),
    )
    admin_server = None
    admin_registrations: list[Registration] = []
    if admin_address is None:
        registrations.append(admin)
    else:
        admin_server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        admin_registrations.append(admin)
        admin.register(admin_server)
    for registration in registrations:
        registration.register(server)
    names = [r.descriptor.full_name for r in registrations]
    health = add_health_and_reflection(server, names)
    port = add_port(server, address, tls)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    # A worker's own address (--worker-listen): clients balance requests over workers.
    for extra in extra_addresses:
        if add_port(server, extra, tls) == 0:
            raise RuntimeError(f"could not bind {extra}")
    admin_port = None
    if admin_server is not None and admin_address is not None:
        admin_health = add_health_and_reflection(admin_server, (admin.descriptor.full_name,))
        admin_port = add_port(admin_server, admin_address, tls)
        if admin_port == 0:
            raise RuntimeError(f"could not bind the admin address {admin_address}")
        await admin_server.start()
        await mark_serving(admin_health, (admin.descriptor.full_name,))
    await server.start()
    monitor.start()
    routes.start()
    if tenants is not None:
        tenants.start()
    await mark_serving(health, names)
    return RunningGateway(
        health=[health] if admin_server is None else [health, admin_health],
        drain_gate=drain_gate,
        server=server,
        port=port,
        service=service,
        backends=backends,
        monitor=monitor,
        routes=routes,
        tenancy=tenants,
        admin_server=admin_server,
        admin_port=admin_port,
        pace=pace,
        services=tuple(r.descriptor for r in registrations),
        admin_services=tuple(r.descriptor for r in admin_registrations),
    )


def _service(module: Any, name: str) -> ServiceDescriptor:
    descriptor: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
    return descriptor


def resilience_policy(config: ResilienceConfig) -> ResiliencePolicy:
    """The domain's policy object from the validated configuration."""
    return ResiliencePolicy(
        ttft_timeout_s=config.ttft_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        queue_timeout_s=config.queue_timeout_s,
        retry=RetryPolicy(**config.retry.model_dump()),
    )
