"""The published demo key serves this machine's clients only, even through a
shim that listens on every interface: a client reaching the shim over a
non-loopback address is refused, whatever headers it sends."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from backends.engines.sim import SimConfig
from common.grpcutil.status import parse_status
from devstack.__main__ import DEMO_KEY, DEMO_TENANTS
from gateway.tenancy.runtime import TenancyOptions
from gateway.transport.origin import CLIENT_ADDRESS_KEY
from llmgw.v1 import chat_pb2 as pb
from tests.conftest import Deployment, Shim, deploy, params, start_shim
from tests.tenancy_helpers import bearer, tenant, write_tenants

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one (the source address
    the kernel would pick for an outside destination; a UDP connect sends nothing)."""
    for target in ("8.8.8.8", "10.255.255.255", "192.0.2.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))
            except OSError:
                continue
            address = str(probe.getsockname()[0])
            if not address.startswith("127.") and address != "0.0.0.0":
                return address
    return None


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[tuple[Deployment, Shim, str]]:
    # The demo tenant file as `make run` serves it, plus an ordinary tenant.
    own = tmp_path / "own.yaml"
    keys = write_tenants(own, [tenant("acme")], admin=False)
    merged = tmp_path / "tenants.yaml"
    doc = yaml.safe_load(DEMO_TENANTS.read_text())
    doc["tenants"].extend(yaml.safe_load(own.read_text())["tenants"])
    merged.write_text(yaml.safe_dump(doc))
    d = await deploy({"sim-small": SimConfig(output_tokens=4)}, tenancy=TenancyOptions(merged))
    shim, task = await start_shim(d.address, host="0.0.0.0")
    yield d, shim, keys["acme"]
    shim.server.should_exit = True
    await task
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


async def test_the_demo_key_is_refused_to_remote_clients_of_a_public_shim(
    demo: tuple[Deployment, Shim, str],
) -> None:
    _, shim, own_key = demo
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback address to call from")
    port = shim.base_url.rsplit(":", 1)[1]
    demo_key = {"authorization": f"Bearer {DEMO_KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as local:
        assert (await local.post("/v1/chat/completions", json=BODY, headers=demo_key)).is_success
    async with httpx.AsyncClient(base_url=f"http://{outside}:{port}") as remote:
        for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET")):
            answer = await remote.request(
                method,
                path,
                json=BODY,
                # A remote client claiming to be local changes nothing: the shim writes
                # the address itself and forwards no such header.
                headers={
                    **demo_key,
                    CLIENT_ADDRESS_KEY: "127.0.0.1",
                    "x-forwarded-for": "127.0.0.1",
                },
            )
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "demo_key_not_local"
            assert DEMO_KEY not in answer.text
        # Ordinary keys are served from anywhere.
        own = {"authorization": f"Bearer {own_key}"}
        assert (await remote.post("/v1/chat/completions", json=BODY, headers=own)).is_success


async def test_a_gateway_call_relaying_a_remote_client_is_refused(
    demo: tuple[Deployment, Shim, str],
) -> None:
    d, _, _ = demo
    request = pb.CreateChatCompletionRequest(params=params())
    reply = await d.chat.CreateChatCompletion(request, metadata=bearer(DEMO_KEY))
    assert reply.usage.completion_tokens > 0  # a local gRPC client: served
    relayed = (*bearer(DEMO_KEY), (CLIENT_ADDRESS_KEY, "192.0.2.7"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await d.chat.CreateChatCompletion(request, metadata=relayed)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert parse_status(caught.value).reason == "demo_key_not_local"
    stream = d.chat.StreamChatCompletion(
        pb.StreamChatCompletionRequest(params=params()), metadata=relayed
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
