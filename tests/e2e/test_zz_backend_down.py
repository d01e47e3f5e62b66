"""One vLLM server killed: what it was streaming fails clearly, and new requests for its
model fail over to the fallback model (devstack.vllm: gemma3-270m -> smollm2-135m-instruct).

Runs last (marked destructive): the killed server stays down for the rest of the
session.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.e2e.conftest import E2EStack
from tests.e2e.probe import GEMMA, SMOLLM, eventually

pytestmark = pytest.mark.destructive

# "Fails clearly" must also mean "fails soon": nothing may wait for a dead server.
BOUND_S = 15


async def _sidecar_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return int(reply.status)


async def test_killed_vllm_fails_over_and_nothing_hangs(e2e: E2EStack) -> None:
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Tell me a very long story about the sea."}],
        "max_tokens": 1000,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=e2e.rest, timeout=BOUND_S * 2) as http:
        # A stream in flight when the server dies ends with an error event, not [DONE].
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            contents = 0
            async for line in lines:
                contents += '"content":' in line
                if contents >= 3:
                    break
            e2e.stack.kill(f"vllm-{GEMMA}")
            killed_at = time.monotonic()
            rest = [line async for line in lines]
        assert time.monotonic() - killed_at < BOUND_S
        assert any(line.startswith('data: {"error"') for line in rest), rest[-3:]
        assert "data: [DONE]" not in rest

        # The sidecar reports NOT_SERVING once vLLM's /health stops answering.
        await eventually(lambda: _not_serving(e2e.sidecar(GEMMA)), BOUND_S, "sidecar NOT_SERVING")

        # New requests for the dead model are answered by its fallback, promptly.
        for stream in (False, True):
            started = time.monotonic()
            response = await http.post(
                "/v1/chat/completions", json={**body, "max_tokens": 5, "stream": stream}
            )
            assert time.monotonic() - started < BOUND_S
            assert response.status_code == 200, response.text
            if stream:
                assert response.text.rstrip().endswith("data: [DONE]")
                assert f'"model":"{SMOLLM}"' in response.text
            else:
                assert response.json()["model"] == SMOLLM
                assert response.json()["choices"][0]["message"]["content"]

    # Over gRPC too: the answer names the model that served it.
    async with grpc.aio.insecure_channel(e2e.grpc) as channel:
        chat = pb_grpc.ChatServiceStub(channel)
        params = pb.ChatCompletionParams(
            model=GEMMA, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")], max_tokens=5
        )
        started = time.monotonic()
        reply = await chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params), timeout=BOUND_S * 2
        )
        assert time.monotonic() - started < BOUND_S
        assert reply.model == SMOLLM and reply.message.content

    # The other model is untouched.
    async with openai.AsyncOpenAI(
        base_url=e2e.rest + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=SMOLLM,
                    messages=[{"role": "user", "content": "Say hello"}],
                    max_tokens=4,
                )
                for _ in range(3)
            )
        )
    assert all(r.choices[0].message.content for r in replies)


async def _not_serving(address: str) -> bool:
    return await _sidecar_status(address) == health_pb2.HealthCheckResponse.NOT_SERVING
