"""--admin-listen: the AdminService on a port of its own, absent from the API port,
still behind admin keys; both ports answer grpc.health.v1."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backends.engines.sim import SimConfig, SimEngine
from backends.server import start_sidecar
from gateway.config import GatewayConfig
from gateway.server import ADMIN_SERVICE, start_gateway
from gateway.tenancy.runtime import TenancyOptions
from llmgw.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.tenancy_helpers import bearer, tenant, write_tenants


async def test_admin_service_is_served_only_on_its_own_port(tmp_path: Path) -> None:
    sidecar = await start_sidecar(SimEngine(SimConfig(output_tokens=4)))
    tenants = tmp_path / "tenants.yaml"
    keys = write_tenants(tenants, [tenant("acme")])
    config = GatewayConfig.model_validate(
        {"models": [{"name": "sim-small", "endpoints": [f"127.0.0.1:{sidecar.port}"]}]}
    )
    gateway = await start_gateway(
        config, tenancy=TenancyOptions(tenants_file=tenants), admin_address="127.0.0.1:0"
    )
    assert gateway.admin_port is not None and gateway.admin_port != gateway.port
    api = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    admin = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.admin_port}")
    try:
        request = admin_pb2.ListModelsRequest()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_pb2_grpc.AdminServiceStub(api).ListModels(
                request, metadata=bearer(keys["admin"])
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

        stub = admin_pb2_grpc.AdminServiceStub(admin)
        listed = await stub.ListModels(request, metadata=bearer(keys["admin"]))
        assert [m.model for m in listed.models] == ["sim-small"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(request, metadata=bearer(keys["acme"]))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        for channel, service in ((admin, ADMIN_SERVICE), (api, "")):
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service)
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(api).Check(
                health_pb2.HealthCheckRequest(service=ADMIN_SERVICE)
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await api.close()
        await admin.close()
        await gateway.stop(0)
        await sidecar.stop(0)
