"""TLS on every hop with real certificates from ``make certs``: HTTPS to the shim,
TLS from the shim to the gateway, mutual TLS from the gateway to a sidecar that
refuses clients without a certificate, and server certificates reloaded from
disk without a restart."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from backends.engines.sim import SimConfig, SimEngine
from backends.server import RunningSidecar, start_sidecar
from common.grpcutil.tls import ClientTls, ServerTls, open_channel
from gateway.config import GatewayConfig
from gateway.server import RunningGateway, start_gateway
from llmgw.backend.v1 import backend_pb2 as bpb
from llmgw.backend.v1 import backend_pb2_grpc as bpb_grpc
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from scripts.make_certs import issue, make_all, make_ca
from tests.conftest import ANY_KEY, params, start_shim

GENERATE = bpb.GenerateRequest(
    request_id="r",
    model="sim",
    messages=[bpb.Message(role=bpb.ROLE_USER, content="hi")],
    sampling=bpb.SamplingParams(max_tokens=3),
)


@dataclass
class Secured:
    certs: Path
    sidecar: RunningSidecar
    gateway: RunningGateway

    def path(self, name: str) -> Path:
        return self.certs / name


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    certs = tmp_path / "certs"
    make_all(certs)
    server = ServerTls(certs / "server.pem", certs / "server-key.pem")
    sidecar = await start_sidecar(
        SimEngine(SimConfig(output_tokens=6)),
        tls=ServerTls(server.cert, server.key, client_ca=certs / "ca.pem"),  # mutual TLS
    )
    config = GatewayConfig.model_validate(
        {"models": [{"name": "sim-small", "aliases": ["small"],
                     "endpoints": [f"127.0.0.1:{sidecar.port}"]}]}
    )  # fmt: skip
    gateway = await start_gateway(
        config,
        tls=server,
        backend_tls=ClientTls(certs / "ca.pem", certs / "client.pem", certs / "client-key.pem"),
    )
    yield Secured(certs, sidecar, gateway)
    await gateway.stop(0)
    await sidecar.stop(0)


async def _generate(channel: grpc.aio.Channel) -> int:
    """Tokens generated (deltas may be merged into fewer messages)."""
    text = ""
    async for message in bpb_grpc.BackendServiceStub(channel).Generate(GENERATE, timeout=10):
        if message.HasField("delta"):
            text += message.delta.text
    return len(text.split())


async def test_https_to_the_shim_tls_to_the_gateway_mtls_to_the_sidecar(secured: Secured) -> None:
    shim, task = await start_shim(
        f"localhost:{secured.gateway.port}",
        tls_cert=secured.path("server.pem"),
        tls_key=secured.path("server-key.pem"),
        gateway_tls_ca=secured.path("ca.pem"),
    )
    try:
        base = shim.base_url.replace("http://127.0.0.1", "https://localhost")
        verify = ssl.create_default_context(cafile=secured.path("ca.pem"))
        async with httpx.AsyncClient(base_url=base, verify=verify, headers=ANY_KEY) as http:
            body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
            answer = await http.post("/v1/chat/completions", json={**body, "stream": True})
            assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
        async with httpx.AsyncClient(base_url=base) as unverified:  # the system CAs: refused
            with pytest.raises(httpx.ConnectError):
                await unverified.get("/healthz")
    finally:
        shim.server.should_exit = True
        await task


async def test_the_gateway_speaks_only_tls(secured: Secured) -> None:
    target = f"localhost:{secured.gateway.port}"
    tls = ClientTls(secured.path("ca.pem"))
    async with open_channel(target, tls) as channel:
        reply = await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params()), timeout=10
        )
        assert reply.usage.completion_tokens > 0
    async with grpc.aio.insecure_channel(target) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ChatServiceStub(plaintext).CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params()), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_sidecar_refuses_clients_without_a_certificate_from_its_ca(
    secured: Secured, tmp_path: Path
) -> None:
    target = f"localhost:{secured.sidecar.port}"
    ca = secured.path("ca.pem")
    with_cert = ClientTls(ca, secured.path("client.pem"), secured.path("client-key.pem"))
    async with open_channel(target, with_cert) as channel:
        assert await _generate(channel) == 3
    other = tmp_path / "other"
    make_all(other)  # a certificate from another CA
    refused = [
        ClientTls(ca),  # TLS, but no client certificate
        ClientTls(ca, other / "client.pem", other / "client-key.pem"),
    ]
    for tls in refused:
        async with open_channel(target, tls) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _generate(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(target) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError):
            await _generate(plaintext)


async def test_a_renewed_server_certificate_is_served_without_a_restart(
    secured: Secured, tmp_path: Path
) -> None:
    renewed = tmp_path / "renewed"
    make_all(renewed)  # a new CA: only the renewed certificate chains to it
    target = f"localhost:{secured.sidecar.port}"
    client = (secured.path("client.pem"), secured.path("client-key.pem"))
    new_trust = ClientTls(renewed / "ca.pem", *client)
    async with open_channel(target, new_trust) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await _generate(channel)  # still the old certificate
    shutil.copy(renewed / "server-key.pem", secured.path("server-key.pem"))
    shutil.copy(renewed / "server.pem", secured.path("server.pem"))
    async with open_channel(target, new_trust) as channel:
        assert await _generate(channel) == 3  # the next handshake used the new files
    # The gateway's own server certificate reloads the same way (same files).
    async with open_channel(
        f"localhost:{secured.gateway.port}", ClientTls(renewed / "ca.pem")
    ) as channel:
        reply = await pb_grpc.ChatServiceStub(channel).CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params()), timeout=10
        )
        assert reply.usage.completion_tokens > 0


async def test_the_shim_reloads_its_https_certificate(secured: Secured, tmp_path: Path) -> None:
    cert, key = tmp_path / "shim.pem", tmp_path / "shim-key.pem"
    shutil.copy(secured.path("server.pem"), cert)
    shutil.copy(secured.path("server-key.pem"), key)
    shim, task = await start_shim(
        f"localhost:{secured.gateway.port}", tls_cert=cert, tls_key=key,
        gateway_tls_ca=secured.path("ca.pem"),
    )  # fmt: skip
    renewed = tmp_path / "renewed"
    make_all(renewed)
    base = shim.base_url.replace("http://127.0.0.1", "https://localhost")
    try:
        shutil.copy(renewed / "server-key.pem", key)
        shutil.copy(renewed / "server.pem", cert)
        verify = ssl.create_default_context(cafile=renewed / "ca.pem")
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # the shim looks at its files every second
            try:
                async with httpx.AsyncClient(base_url=base, verify=verify) as http:
                    assert (await http.get("/healthz")).status_code == 200
                break
            except httpx.ConnectError:
                assert asyncio.get_running_loop().time() < deadline, "never reloaded"
                await asyncio.sleep(0.1)
    finally:
        shim.server.should_exit = True
        await task


async def test_a_sidecar_dialled_by_ip_is_verified_against_a_configured_name(
    tmp_path: Path,
) -> None:
    certs = tmp_path / "named"
    make_all(certs)
    ca = make_ca(certs)
    issue(certs, "named", ca, ["llmgw-sidecar"], client=False)  # no IP in it
    sidecar = await start_sidecar(
        SimEngine(SimConfig(output_tokens=6)),
        tls=ServerTls(certs / "named.pem", certs / "named-key.pem"),
    )
    try:
        target = f"127.0.0.1:{sidecar.port}"
        async with open_channel(target, ClientTls(certs / "ca.pem")) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await _generate(channel)  # 127.0.0.1 is not in the certificate
        named = ClientTls(certs / "ca.pem", server_name="llmgw-sidecar")
        async with open_channel(target, named) as channel:
            assert await _generate(channel) == 3
    finally:
        await sidecar.stop(0)


async def test_a_gateway_requiring_client_certificates_serves_a_shim_that_has_one(
    secured: Secured,
) -> None:
    certs = secured.certs
    config = GatewayConfig.model_validate(
        {"models": [{"name": "sim-small", "aliases": ["small"],
                     "endpoints": [f"127.0.0.1:{secured.sidecar.port}"]}]}
    )  # fmt: skip
    gateway = await start_gateway(
        config,
        tls=ServerTls(certs / "server.pem", certs / "server-key.pem", client_ca=certs / "ca.pem"),
        backend_tls=ClientTls(certs / "ca.pem", certs / "client.pem", certs / "client-key.pem"),
    )
    target = f"localhost:{gateway.port}"
    shim, task = await start_shim(
        target,
        gateway_tls_ca=certs / "ca.pem",
        gateway_tls_cert=certs / "client.pem",
        gateway_tls_key=certs / "client-key.pem",
    )
    try:
        async with open_channel(target, ClientTls(certs / "ca.pem")) as no_cert:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.ChatServiceStub(no_cert).CreateChatCompletion(
                    pb.CreateChatCompletionRequest(params=params()), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with httpx.AsyncClient(base_url=shim.base_url, headers=ANY_KEY) as http:
            body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
            answer = await http.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
    finally:
        shim.server.should_exit = True
        await task
        await gateway.stop(0)
