"""Authentication by default: every method the gateway serves has an entry in
the access table, and over real gRPC every non-public one refuses a call
without a key; a method missing from the table is refused even with one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.config import GatewayConfig
from gateway.server import RunningGateway, start_gateway
from gateway.tenancy.directory import Principal
from gateway.tenancy.runtime import TenancyOptions
from gateway.transport.access import EXEMPT_SERVICES, METHOD_ACCESS, Access
from gateway.transport.auth import AuthInterceptor
from gateway.transport.servicer import ModelServicer
from llmgw.v1 import chat_pb2, chat_pb2_grpc
from tests.tenancy_helpers import bearer, tenant, write_tenants

# A model whose only endpoint is unreachable: nothing here gets as far as a backend.
CONFIG = GatewayConfig.model_validate({"models": [{"name": "m", "endpoints": ["127.0.0.1:1"]}]})


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def servers(gateway: RunningGateway) -> list[tuple[int, tuple[ServiceDescriptor, ...]]]:
    """(port, services registered there) of the API server and the admin server if any."""
    out = [(gateway.port, gateway.services)]
    if gateway.admin_port is not None:
        out.append((gateway.admin_port, gateway.admin_services))
    return out


def methods(gateway: RunningGateway) -> list[tuple[int, MethodDescriptor]]:
    return [(port, m) for port, services in servers(gateway) for s in services for m in s.methods]


@pytest.fixture(params=[None, "127.0.0.1:0"], ids=["one-port", "admin-port"])
async def keyed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[RunningGateway, dict[str, str]]]:
    path = tmp_path / "tenants.yaml"
    issued = write_tenants(path, [tenant("acme")])
    gateway = await start_gateway(
        CONFIG, tenancy=TenancyOptions(tenants_file=path), admin_address=request.param
    )
    yield gateway, issued
    await gateway.stop(0)


async def call(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    metadata: Any = (),
    raw: bytes | None = None,
) -> Any:
    """Call any method with an empty request (or raw bytes), whatever its shape."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    serialize = None if raw is not None else request_class.SerializeToString
    request = raw if raw is not None else request_class()
    path = path_of(method)
    if method.client_streaming:
        requests = iter([request])
        if method.server_streaming:
            stream = channel.stream_stream(path, serialize, response_class.FromString)
            return [m async for m in stream(requests, metadata=metadata)]
        return await channel.stream_unary(path, serialize, response_class.FromString)(
            requests, metadata=metadata
        )
    if method.server_streaming:
        stream = channel.unary_stream(path, serialize, response_class.FromString)
        return [m async for m in stream(request, metadata=metadata)]
    return await channel.unary_unary(path, serialize, response_class.FromString)(
        request, metadata=metadata
    )


async def test_every_method_of_every_registered_service_has_an_access_policy(
    keyed: tuple[RunningGateway, dict[str, str]],
) -> None:
    gateway, _ = keyed
    assert {s.full_name for _, services in servers(gateway) for s in services} >= {
        "llmgw.v1.ChatService",
        "llmgw.v1.ModelService",
        "llmgw.v1.UsageService",
        "llmgw.admin.v1.AdminService",
    }
    missing = [path_of(m) for _, m in methods(gateway) if path_of(m) not in METHOD_ACCESS]
    assert missing == [], f"add these methods to gateway/transport/access.py: {missing}"
    # Keys by default: nothing of the API is public (health and reflection are exempt).
    assert [p for p, access in METHOD_ACCESS.items() if access is Access.PUBLIC] == []
    # What each server actually serves (reflection) is what the walk covered, plus infrastructure.
    for port, services in servers(gateway):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = [
                r
                async for r in stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            ]
        served = {s.name for s in replies[0].list_services_response.service}
        assert served - EXEMPT_SERVICES == {s.full_name for s in services}


async def test_every_non_public_method_is_unauthenticated_without_a_key(
    keyed: tuple[RunningGateway, dict[str, str]],
) -> None:
    gateway, _ = keyed
    checked = []
    for port, method in methods(gateway):
        if METHOD_ACCESS.get(path_of(method)) is Access.PUBLIC:
            continue
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for metadata in ((), (("authorization", "Bearer llmgw_000000000000_nope"),)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(channel, method, metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, path_of(method)
            # The body of a refused call is never parsed: garbage is refused the same way.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(channel, method, raw=b"\xff\xff\xff\xff")
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, path_of(method)
            checked.append(path_of(method))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        # Health stays open for probes.
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert "/llmgw.v1.ChatService/StreamChatCompletion" in checked and len(checked) >= 5


async def test_admin_methods_need_an_admin_key(
    keyed: tuple[RunningGateway, dict[str, str]],
) -> None:
    gateway, keys = keyed
    admin_methods = [
        (port, m) for port, m in methods(gateway) if METHOD_ACCESS[path_of(m)] is Access.ADMIN
    ]
    assert admin_methods
    for port, method in admin_methods:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(channel, method, bearer(keys["acme"]))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            await call(channel, method, bearer(keys["admin"]))


async def serve_models(interceptor: AuthInterceptor) -> tuple[grpc.aio.Server, int]:
    """A server with ModelService and health, behind ``interceptor``."""

    class Service:
        registry = type("Registry", (), {"routes": ()})()

        def models_for(self, caller: object) -> list[object]:
            return []

    server = grpc.aio.server(interceptors=[interceptor])
    chat_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(Service(), 0), server)  # type: ignore[arg-type]
    probes = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(probes, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await probes.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


@pytest.mark.parametrize("keys_on", [True, False])
async def test_a_method_missing_from_the_table_is_refused_even_with_a_key(keys_on: bool) -> None:
    everyone = Principal("k1", None)
    interceptor = AuthInterceptor(
        (lambda token: everyone) if keys_on else None,
        policies={},  # ModelService/ListModels has no entry
    )
    server, port = await serve_models(interceptor)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chat_pb2_grpc.ModelServiceStub(channel).ListModels(
                    chat_pb2.ListModelsRequest(), metadata=bearer("llmgw_x_y")
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # Health is exempt: served without a key and without an entry.
            probe = health_pb2_grpc.HealthStub(channel)
            answer = await probe.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_without_a_tenant_file_the_table_still_decides_but_keys_are_not_needed() -> None:
    gateway = await start_gateway(CONFIG)
    try:
        assert "llmgw.v1.UsageService" not in {s.full_name for s in gateway.services}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            listed = await chat_pb2_grpc.ModelServiceStub(channel).ListModels(
                chat_pb2.ListModelsRequest()
            )
            assert [m.id for m in listed.models] == ["m"]
    finally:
        await gateway.stop(0)
