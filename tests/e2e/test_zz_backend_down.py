"""One vLLM server killed: its requests fail clearly and fast, the other model serves on.

Runs last (marked destructive): the killed server stays down for the rest of
the session.

TODO(routing, issue 4): once model fallbacks land, configure gemma3-270m to fall
back to smollm2-135m-instruct in devstack.vllm's plan and assert here that its
requests are answered by the fallback model instead of failing.
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


async def test_killed_vllm_fails_fast_and_clearly(e2e: E2EStack) -> None:
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

        # New requests: a clear error with an OpenAI body, quickly, for both shapes.
        for stream in (False, True):
            started = time.monotonic()
            response = await http.post("/v1/chat/completions", json={**body, "stream": stream})
            assert time.monotonic() - started < BOUND_S
            assert response.status_code in (500, 502, 503), response.text
            error = response.json()["error"]
            assert error["message"] and error["type"]
            assert "Traceback" not in response.text and "127.0.0.1" not in response.text

    # Over gRPC: an error status, quickly.
    async with grpc.aio.insecure_channel(e2e.grpc) as channel:
        chat = pb_grpc.ChatServiceStub(channel)
        params = pb.ChatCompletionParams(
            model=GEMMA, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")], max_tokens=5
        )
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await chat.CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params), timeout=BOUND_S * 2
            )
        assert time.monotonic() - started < BOUND_S
        assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)

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
