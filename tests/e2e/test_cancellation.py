"""A client that goes away mid-generation aborts the request inside vLLM."""

from __future__ import annotations

import grpc
import httpx

from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.e2e.conftest import E2EStack
from tests.e2e.probe import SMOLLM, eventually, running

ESSAY = "Write a very long and detailed essay about the history of the Roman Empire."
# Long enough that, at tens of tokens a second on a CPU, vLLM would still be
# generating many seconds after the client left, had it not been aborted.
MAX_TOKENS = 1000


async def test_rest_client_disconnect_aborts_in_vllm(e2e: E2EStack) -> None:
    vllm = e2e.vllm_url(SMOLLM)
    await eventually(lambda: _idle(vllm), 30, "vLLM idle before the test")
    body = {
        "model": SMOLLM,
        "messages": [{"role": "user", "content": ESSAY}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    async with (
        httpx.AsyncClient(base_url=e2e.rest, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        contents = 0
        async for line in response.aiter_lines():
            if '"content":' in line and '"content":""' not in line:
                contents += 1
            if contents >= 3:
                break
        await eventually(lambda: _busy(vllm), 5, "the request generating in vLLM")
    # Leaving the block closed the connection mid-stream.
    took = await eventually(lambda: _idle(vllm), 5, "vLLM's num_requests_running back to 0")
    assert took < 5


async def test_grpc_cancel_aborts_in_vllm(e2e: E2EStack) -> None:
    vllm = e2e.vllm_url(SMOLLM)
    await eventually(lambda: _idle(vllm), 30, "vLLM idle before the test")
    async with grpc.aio.insecure_channel(e2e.grpc) as channel:
        call = pb_grpc.ChatServiceStub(channel).StreamChatCompletion(
            pb.StreamChatCompletionRequest(
                params=pb.ChatCompletionParams(
                    model=SMOLLM,
                    messages=[pb.ChatMessage(role=pb.ROLE_USER, content=ESSAY)],
                    max_tokens=MAX_TOKENS,
                )
            ),
            timeout=60,
        )
        deltas = 0
        async for event in call:
            deltas += event.WhichOneof("event") == "delta"
            if deltas >= 3:
                break
        await eventually(lambda: _busy(vllm), 5, "the request generating in vLLM")
        call.cancel()
        took = await eventually(lambda: _idle(vllm), 5, "vLLM's num_requests_running back to 0")
    assert took < 5


async def _idle(vllm: str) -> bool:
    return await running(vllm) == 0


async def _busy(vllm: str) -> bool:
    return await running(vllm) == 1
