"""Stopping a gateway with long streams in flight meters exactly what was sent.

A real gRPC gateway (in this process) with 20 streams running is stopped
with a short drain grace: readiness flips at once, new calls are refused
with UNAVAILABLE, streams still running when the grace ends get an explicit
``gateway_shutting_down`` error, and usage in Redis afterwards equals, per
request, the tokens each client received. With Redis down at that moment the
usage is spooled to a local file and replayed, once, by the next gateway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backends.engines.sim import SimConfig
from gateway.tenancy.runtime import TenancyOptions
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import Deployment, deploy, params, wait_until
from tests.grpc_details import rpc_details
from tests.redis_server import RedisServer
from tests.tenancy_helpers import bearer, tenant, write_tenants

STREAMS = 20
# Sim text is words of the prompt, one token each: a client counts tokens by words.
PROMPT = "alpha beta gamma delta"


@dataclass
class Received:
    """What one client saw of its stream."""

    request_id: str = ""
    text: list[str] = field(default_factory=list)
    finished: bool = False
    code: grpc.StatusCode | None = None
    reason: str = ""

    @property
    def tokens(self) -> int:
        return len("".join(self.text).split())


async def consume(stub: pb_grpc.ChatServiceStub, key: str, out: Received, max_tokens: int) -> None:
    """Read one stream to its end (finished, or an error), recording what arrived."""
    call = stub.StreamChatCompletion(
        pb.StreamChatCompletionRequest(
            params=params(content=PROMPT, max_tokens=max_tokens), include_usage=True
        ),
        metadata=bearer(key),
    )
    try:
        async for message in call:
            kind = message.WhichOneof("event")
            if kind == "start":
                out.request_id = message.start.id
            elif kind == "delta":
                out.text.append(message.delta.content)
            else:
                out.finished = True
    except grpc.aio.AioRpcError as error:
        out.code = error.code()
        # An error without details (a cut connection, say) has no reason: the check says so.
        info = rpc_details(error).get("ErrorInfo")
        out.reason = info.reason if info is not None else ""  # type: ignore[attr-defined]


async def start(tmp_path: Path, redis: RedisServer) -> tuple[Deployment, str]:
    path = tmp_path / "tenants.yaml"
    keys = write_tenants(path, [tenant("acme", concurrent=100)])
    d = await deploy(
        # Long streams: 20 ms a token, up to 1,000 tokens (20 s) each.
        {"sim-small": SimConfig(output_tokens=1000, itl_ms=20)},
        tenancy=TenancyOptions(
            tenants_file=path, redis_url=redis.url, usage_spool=tmp_path / "spool.jsonl"
        ),
    )
    return d, keys["acme"]


async def run_streams(d: Deployment, key: str) -> tuple[list[Received], list[asyncio.Task[None]]]:
    received = [Received() for _ in range(STREAMS)]
    # A few short ones finish inside the grace; the rest are cut.
    tasks = [
        asyncio.create_task(consume(d.chat, key, r, 60 if i < 4 else 1000))
        for i, r in enumerate(received)
    ]
    try:
        await wait_until(lambda: all(r.tokens >= 3 for r in received), timeout=30)
    except AssertionError:
        raise AssertionError(f"streams did not start: {received}") from None
    return received, tasks


async def stop_gateway(d: Deployment, grace: float) -> None:
    """Stop the gateway while checking, during the drain, what new callers see."""
    stopping = asyncio.create_task(d.gateway.stop(grace))
    await asyncio.sleep(0)  # the drain has begun: admissions closed, readiness flipped
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await d.chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params(max_tokens=1)), metadata=(), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable: go elsewhere
    try:
        answer = await health_pb2_grpc.HealthStub(d.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    except grpc.aio.AioRpcError as error:  # or the server no longer takes calls at all
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    await stopping
    for s in d.sidecars:
        await s.stop(0)
    await d.channel.close()


async def metered(redis: RedisServer) -> dict[str, int]:
    """Completion tokens per request id, from the usage event stream in Redis."""
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        entries = await client.xrange("{llmgw:acme}:events")
    finally:
        await client.aclose()
    out: dict[str, int] = {}
    for _, fields in entries:
        assert fields["request_id"] not in out, "metered twice"
        out[fields["request_id"]] = int(fields["completion_tokens"])
    return out


def check(received: list[Received], usage: dict[str, int]) -> None:
    finished = [r for r in received if r.finished]
    cut = [r for r in received if not r.finished]
    assert len(finished) == 4 and all(r.tokens == 60 for r in finished)
    assert len(cut) == STREAMS - 4
    for r in cut:
        assert (r.code, r.reason) == (grpc.StatusCode.UNAVAILABLE, "gateway_shutting_down")
        assert 3 <= r.tokens < 1000
    assert usage == {r.request_id: r.tokens for r in received}


async def test_sigterm_drain_meters_what_every_stream_sent(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    d, key = await start(tmp_path, redis_server)
    received, tasks = await run_streams(d, key)
    await stop_gateway(d, grace=2.0)
    await asyncio.gather(*tasks)
    check(received, await metered(redis_server))
    assert not (tmp_path / "spool.jsonl").exists()  # nothing needed spooling


async def test_with_redis_down_usage_is_spooled_and_replayed_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    d, key = await start(tmp_path, redis_server)
    received, tasks = await run_streams(d, key)
    redis_server.kill()
    await stop_gateway(d, grace=2.0)
    await asyncio.gather(*tasks)
    spool = tmp_path / "spool.jsonl"
    lines = spool.read_text().splitlines()
    assert len(lines) == STREAMS
    copy = spool.read_bytes()

    redis_server.start()  # an empty Redis: everything it will hold comes from the spool
    replayer, _ = await start(tmp_path, redis_server)
    await wait_until(lambda: not spool.exists() and not list(tmp_path.glob("*.replay")), 10)
    await replayer.gateway.stop(0)
    await replayer.channel.close()
    for s in replayer.sidecars:
        await s.stop(0)
    usage = await metered(redis_server)
    check(received, usage)

    # Replayed again (a crash after writing but before deleting the file): counted once.
    spool.write_bytes(copy)
    again, _ = await start(tmp_path, redis_server)
    await wait_until(lambda: not spool.exists(), 10)
    await again.gateway.stop(0)
    await again.channel.close()
    for s in again.sidecars:
        await s.stop(0)
    assert await metered(redis_server) == usage
