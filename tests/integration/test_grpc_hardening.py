"""The gateway and the sidecar under hostile gRPC input: garbage bytes are
INVALID_ARGUMENT without Python internals, over-long lists are refused before
any per-message work, and such a request does not freeze other streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import gateway.transport.servicer
from backends.engines.sim import SimConfig
from common.grpcutil.status import parse_status
from gateway.domain.chat import ChatRequest
from gateway.tenancy.runtime import TenancyOptions
from gateway.transport.convert import to_chat_request
from llmgw.v1 import chat_pb2 as pb
from tests.conftest import Deployment, deploy, params, user, wait_until
from tests.tenancy_helpers import bearer, tenant, write_tenants

CREATE = "/llmgw.v1.ChatService/CreateChatCompletion"
STREAM = "/llmgw.v1.ChatService/StreamChatCompletion"
GENERATE = "/llmgw.backend.v1.BackendService/Generate"


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[Deployment, str, str]]:
    path = tmp_path / "tenants.yaml"
    keys = write_tenants(path, [tenant("acme"), tenant("victim")])
    d = await deploy(
        {"sim-small": SimConfig(itl_ms=10, output_tokens=300, max_context_tokens=100_000)},
        tenancy=TenancyOptions(tenants_file=path),
    )
    yield d, keys["acme"], keys["victim"]
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


async def _raw_call(channel: grpc.aio.Channel, method: str, payload: bytes, **kw: object) -> None:
    if method == CREATE:
        await channel.unary_unary(method)(payload, **kw)  # type: ignore[arg-type]
        return
    async for _ in channel.unary_stream(method)(payload, **kw):  # type: ignore[arg-type]
        pass


@pytest.mark.parametrize("payload", [b"\xff\xff\xff garbage", b"\x0a\x05\x0a\x03ab"])
async def test_garbage_protobuf_is_invalid_argument_everywhere(
    keyed: tuple[Deployment, str, str], payload: bytes
) -> None:
    d, key, _ = keyed
    sidecar = grpc.aio.insecure_channel(f"127.0.0.1:{d.sidecars[0].port}")
    try:
        for channel, method in ((d.channel, CREATE), (d.channel, STREAM), (sidecar, GENERATE)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _raw_call(channel, method, payload, metadata=bearer(key))
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.details())
            assert "class" not in (error.details() or "") and "Error" not in (error.details() or "")
            parsed = parse_status(error)
            assert parsed.reason == "malformed_request"
            assert parsed.field_violations[0].field == "request"
    finally:
        await sidecar.close()


def _huge(count: int) -> bytes:
    request_params = pb.ChatCompletionParams(model="small")
    request_params.messages.extend([user("hi")] * count)
    return pb.StreamChatCompletionRequest(params=request_params).SerializeToString()


async def test_too_many_messages_is_invalid_argument_naming_the_limit(
    keyed: tuple[Deployment, str, str],
) -> None:
    d, key, _ = keyed
    request = pb.CreateChatCompletionRequest(params=params())
    request.params.messages.extend([user("x")] * 2048)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await d.chat.CreateChatCompletion(request, metadata=bearer(key))
    parsed = parse_status(caught.value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed.reason == "array_above_max_length"
    assert parsed.field_violations[0].field == "messages"
    assert "maximum length 2048" in parsed.message and "2049" in parsed.message
    del request.params.messages[-1]
    reply = await d.chat.CreateChatCompletion(request, metadata=bearer(key))
    assert reply.usage.completion_tokens > 0


async def test_a_huge_message_count_does_not_freeze_other_streams(
    keyed: tuple[Deployment, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, key, victim_key = keyed
    # How many messages each request the servicer converts (per-message work) has.
    converted: list[int] = []

    def counting(params: pb.ChatCompletionParams, session: str = "") -> ChatRequest:
        converted.append(len(params.messages))
        return to_chat_request(params, session)

    monkeypatch.setattr(gateway.transport.servicer, "to_chat_request", counting)
    flood = _huge(500_000)  # built before the clock starts: the attack is on the gateway
    # What the flood would freeze the loop for if the gateway converted it (it must
    # refuse it first): converting a tenth of it, on this machine under its load now.
    tenth = pb.StreamChatCompletionRequest.FromString(_huge(50_000))
    began = time.perf_counter()
    to_chat_request(tenth.params)
    freeze = 10 * (time.perf_counter() - began)
    victim = d.chat.StreamChatCompletion(
        pb.StreamChatCompletionRequest(params=params(max_tokens=300)),
        metadata=bearer(victim_key),
    )
    arrivals: list[float] = []
    codes: list[grpc.StatusCode] = []

    async def attack() -> None:
        try:
            await _raw_call(d.channel, STREAM, flood, metadata=bearer(key))
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())

    attacks: asyncio.Future[list[None]] | None = None
    async for message in victim:
        arrivals.append(time.perf_counter())
        if attacks is None and message.HasField("delta"):
            attacks = asyncio.gather(attack(), attack())
        if attacks is not None and attacks.done() and len(arrivals) > 50:
            victim.cancel()
            break
    assert attacks is not None
    await attacks
    gaps = [b - a for a, b in itertools.pairwise(arrivals[1:])]
    print(
        f"victim: {len(arrivals)} messages, largest gap {max(gaps) * 1000:.0f} ms "
        f"(converting the flood would take {freeze * 1000:.0f} ms)"
    )
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert converted == [1]  # the victim's request only: the floods were refused first
    # A gateway that converted the flood would stop every stream for at least one
    # conversion at a time (two in all); receiving 2 x 4 MB costs a few hundred ms.
    # Measured under the same load, so a busy machine stretches both alike.
    assert max(gaps) < freeze / 2


async def test_cancels_racing_the_first_token_log_no_error(
    keyed: tuple[Deployment, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    d, key, _ = keyed
    caplog.set_level(logging.WARNING)
    request = pb.StreamChatCompletionRequest(params=params(max_tokens=5))
    unary = pb.CreateChatCompletionRequest(params=params(max_tokens=5))

    async def cancel_after(delay: float, stream: bool) -> None:
        call: Any = (
            d.chat.StreamChatCompletion(request, metadata=bearer(key))
            if stream
            else d.chat.CreateChatCompletion(unary, metadata=bearer(key))
        )
        await asyncio.sleep(delay)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            if stream:
                async for _ in call:
                    pass
            else:
                await call

    rng = random.Random(7)
    for _ in range(20):  # cancels spread over admission, routing and the first tokens
        await asyncio.gather(
            *(cancel_after(rng.uniform(0, 0.03), stream=i % 2 == 0) for i in range(10))
        )
    await wait_until(lambda: all(e.active == 0 for e in d.engines.values()), timeout=10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
