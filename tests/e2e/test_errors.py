"""A prompt longer than the model's context: a clear 400 over REST, INVALID_ARGUMENT over gRPC."""

from __future__ import annotations

import grpc
import httpx
import pytest

from common.grpcutil.status import parse_status
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.e2e.conftest import E2EStack
from tests.e2e.probe import MODELS

# Well over the 2048-token context the stack gives vLLM, in any tokenizer.
TOO_LONG = "hello " * 5000


@pytest.mark.parametrize("model", MODELS)
async def test_rest_prompt_over_the_context_is_a_400(e2e: E2EStack, model: str) -> None:
    async with httpx.AsyncClient(base_url=e2e.rest, timeout=60) as client:
        for stream in (False, True):
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": TOO_LONG}],
                    "max_tokens": 5,
                    "stream": stream,
                },
            )
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert "maximum context length is 2048 tokens" in error["message"]
            assert error["param"] == "messages"
            assert "Traceback" not in response.text


@pytest.mark.parametrize("model", MODELS)
async def test_grpc_prompt_over_the_context_is_invalid_argument(e2e: E2EStack, model: str) -> None:
    request = pb.ChatCompletionParams(
        model=model, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=TOO_LONG)], max_tokens=5
    )
    async with grpc.aio.insecure_channel(e2e.grpc) as channel:
        chat = pb_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await chat.CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=request), timeout=60
            )
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=request), timeout=60
            ):
                pass
    for error in (unary.value, streamed.value):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "maximum context length" in (error.details() or "")
        status = parse_status(error)
        assert [v.field for v in status.field_violations] == ["messages"]
