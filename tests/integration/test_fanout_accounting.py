"""A completions call with several choices (``n``, or several prompts) is one request
for its tenant: one request of the RPM limit, one concurrency slot, one usage record
whose tokens are those of every choice (each prompt counted once, as OpenAI counts
them), and one reservation covering every choice that is released however the call
ends. Real gateway, real sidecars, limits and usage in memory or in a real Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
from prometheus_client import REGISTRY

from backends.engines.sim import SimConfig
from gateway.tenancy.runtime import Tenancy, TenancyOptions
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import completions_pb2 as cpb
from llmgw.v1 import completions_pb2_grpc, usage_pb2, usage_pb2_grpc
from tests.conftest import Deployment, deploy, params, start_shim, wait_until
from tests.integration.test_tenancy_grpc import rpc_details
from tests.redis_server import RedisServer
from tests.tenancy_helpers import bearer, tenant, write_tenants

PROMPT = "alpha beta gamma"
# Refilled one request (token) a minute: what a test spends cannot come back during it.
SLOW = 1


@dataclass
class Fanned:
    d: Deployment
    keys: dict[str, str]

    @property
    def tenancy(self) -> Tenancy:
        assert self.d.gateway.tenancy is not None
        return self.d.gateway.tenancy

    @property
    def completions(self) -> completions_pb2_grpc.CompletionServiceStub:
        return completions_pb2_grpc.CompletionServiceStub(self.d.channel)

    async def settled(self) -> None:
        """Wait until every call has ended in the gateway and its usage is written."""
        await wait_until(lambda: self.d.gateway.service.in_flight == 0)
        await self.tenancy.admission.drain()
        await self.tenancy.meter.flush()

    async def usage(self, tenant: str) -> usage_pb2.UsageRecord:
        stub = usage_pb2_grpc.UsageServiceStub(self.d.channel)
        reply = await stub.GetUsage(usage_pb2.GetUsageRequest(), metadata=bearer(self.keys[tenant]))
        (row,) = reply.records
        return row


@pytest.fixture(params=["memory", "redis"])
async def fanned(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fanned]:
    """Tenant ``two``: two requests, then one a minute. Tenant ``one``: one call at a
    time and 1000 tokens, refilled one a minute. sim-small streams slowly."""
    redis_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_url = server.url
    path = tmp_path / "tenants.yaml"
    keys = write_tenants(
        path,
        [
            tenant("two", rpm=SLOW, requests_burst=2),
            tenant("one", concurrent=1, tpm=SLOW, tokens_burst=1000),
        ],
    )
    d = await deploy(
        {"sim-small": SimConfig(output_tokens=200, itl_ms=50)},
        tenancy=TenancyOptions(tenants_file=path, redis_url=redis_url),
    )
    yield Fanned(d, keys)
    await d.channel.close()
    await d.gateway.stop(0)
    for s in d.sidecars:
        await s.stop(0)


def requests_counted(tenant: str) -> Counter[str]:
    """The gateway's request and token counters for ``tenant``, over every model and
    outcome (the metrics are the process's: compare before and after)."""
    counted: Counter[str] = Counter()
    names = {
        "llmgw_gateway_requests_total": "requests",
        "llmgw_gateway_prompt_tokens_total": "prompt_tokens",
        "llmgw_gateway_completion_tokens_total": "completion_tokens",
    }
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name in names and sample.labels.get("tenant") == tenant:
                counted[names[sample.name]] += int(sample.value)
    return counted


def completion_params(**kw: object) -> cpb.CompletionParams:
    kw.setdefault("prompts", [PROMPT])
    return cpb.CompletionParams(model="small", **kw)  # type: ignore[arg-type]


async def test_a_call_with_several_choices_is_one_request_of_the_rpm_limit_and_of_usage(
    fanned: Fanned,
) -> None:
    key = bearer(fanned.keys["two"])
    counted_before = requests_counted("two")
    whole = fanned.completions.CreateCompletion(
        cpb.CreateCompletionRequest(params=completion_params(n=3, max_tokens=2)), metadata=key
    )
    reply = await whole
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert dict(await whole.initial_metadata())["x-ratelimit-remaining-requests"] == "1"
    streamed = fanned.completions.StreamCompletion(
        cpb.StreamCompletionRequest(
            params=completion_params(prompts=[PROMPT, "delta epsilon"], max_tokens=3),
            include_usage=True,
        ),
        metadata=key,
    )
    messages = [m async for m in streamed]
    assert {m.choice_end.index for m in messages if m.HasField("choice_end")} == {0, 1}
    streamed_usage = messages[-1].end.usage
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fanned.completions.CreateCompletion(
            cpb.CreateCompletionRequest(params=completion_params(n=2, max_tokens=2)), metadata=key
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    violation = rpc_details(caught.value)["QuotaFailure"].violations[0]  # type: ignore[attr-defined]
    assert violation.description.startswith("requests")

    await fanned.settled()
    row = await fanned.usage("two")
    # Two requests, with the tokens each client was told it used, summed.
    assert (row.requests, row.errors, row.cancelled) == (2, 0, 0)
    assert row.completion_tokens == reply.usage.completion_tokens + streamed_usage.completion_tokens
    assert row.completion_tokens == 3 * 2 + 2 * 3
    assert row.prompt_tokens == reply.usage.prompt_tokens + streamed_usage.prompt_tokens
    assert 0 < reply.usage.prompt_tokens < row.prompt_tokens
    # The gateway's metrics count client requests too: each call once, with its tokens.
    assert requests_counted("two") - counted_before == {
        "requests": 2, "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens
    }  # fmt: skip


async def test_a_cancelled_call_with_several_choices_holds_one_slot_and_releases_it(
    fanned: Fanned,
) -> None:
    key = bearer(fanned.keys["one"])  # one call at a time, 1000 tokens
    params = completion_params(n=3, max_tokens=100)  # reserves 3 x 100 tokens and the prompt
    stream = fanned.completions.StreamCompletion(
        cpb.StreamCompletionRequest(params=params), metadata=key
    )
    assert (await stream.read()).HasField("start")
    reserved = 1000 - int(dict(await stream.initial_metadata())["x-ratelimit-remaining-tokens"])
    assert reserved > 300
    assert (await stream.read()).HasField("delta")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # the one slot is the fan-out's
        await fanned.completions.CreateCompletion(
            cpb.CreateCompletionRequest(params=completion_params(max_tokens=1)), metadata=key
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    violation = rpc_details(caught.value)["QuotaFailure"].violations[0]  # type: ignore[attr-defined]
    assert violation.description.startswith("concurrency")
    stream.cancel()

    await fanned.settled()
    after = fanned.completions.CreateCompletion(
        cpb.CreateCompletionRequest(params=completion_params(max_tokens=1)), metadata=key
    )
    await after  # the slot is free again
    remaining = int(dict(await after.initial_metadata())["x-ratelimit-remaining-tokens"])
    # What the cancelled call did not use went back: far more than this call's own ~6.
    assert remaining > 1000 - reserved + 200
    await fanned.settled()
    row = await fanned.usage("one")
    assert (row.requests, row.cancelled, row.errors) == (2, 1, 0)
    assert 0 < row.completion_tokens < 100


async def test_a_chat_call_with_n_choices_reserves_tokens_for_every_choice(
    fanned: Fanned,
) -> None:
    # One generation answers chat's n choices: one request already; its tokens are n times.
    key = bearer(fanned.keys["one"])
    stream = fanned.d.chat.StreamChatCompletion(
        pb.StreamChatCompletionRequest(params=params(n=3, max_tokens=100)), metadata=key
    )
    assert (await stream.read()).HasField("start")
    remaining = int(dict(await stream.initial_metadata())["x-ratelimit-remaining-tokens"])
    assert remaining <= 1000 - 3 * 100
    stream.cancel()
    await fanned.settled()
    row = await fanned.usage("one")
    assert (row.requests, row.cancelled) == (1, 1)


async def test_over_rest_a_call_with_several_choices_is_one_request(fanned: Fanned) -> None:
    shim, task = await start_shim(fanned.d.address)
    try:
        async with openai.AsyncOpenAI(
            base_url=shim.base_url + "/v1", api_key=fanned.keys["two"], max_retries=0
        ) as client:
            first = await client.completions.create(model="small", prompt=PROMPT, n=3, max_tokens=2)
            second = await client.completions.create(
                model="small", prompt=[PROMPT, "delta"], n=2, max_tokens=2
            )
            assert len(first.choices) == 3 and len(second.choices) == 4
            with pytest.raises(openai.RateLimitError):
                await client.completions.create(model="small", prompt=PROMPT, n=2, max_tokens=2)
    finally:
        shim.server.should_exit = True
        await task
    await fanned.settled()
    row = await fanned.usage("two")
    assert first.usage is not None and second.usage is not None
    assert (row.requests, row.completion_tokens, row.prompt_tokens) == (
        2,
        first.usage.completion_tokens + second.usage.completion_tokens,
        first.usage.prompt_tokens + second.usage.prompt_tokens,
    )
