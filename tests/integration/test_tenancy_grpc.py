"""Tenancy over gRPC: keys, model permissions, limits with QuotaFailure/RetryInfo,
rate-limit metadata, reserve/reconcile (also on cancel and failure), usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from backends.engines.sim import FailureMode, SimConfig
from gateway.tenancy.runtime import Tenancy, TenancyOptions
from llmgw.admin.v1 import admin_pb2, admin_pb2_grpc
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import usage_pb2, usage_pb2_grpc
from tests.conftest import Deployment, deploy, params, wait_until
from tests.grpc_details import rpc_details
from tests.tenancy_helpers import bearer, tenant, write_tenants


@dataclass
class Tenanted:
    d: Deployment
    keys: dict[str, str]
    path: Path

    @property
    def tenancy(self) -> Tenancy:
        assert self.d.gateway.tenancy is not None
        return self.d.gateway.tenancy

    def create(self, key: str, **kw: object) -> grpc.aio.UnaryUnaryCall:  # type: ignore[type-arg]
        return self.d.chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params(**kw)),
            metadata=bearer(key),  # type: ignore[arg-type]
        )

    def stream(
        self, key: str, include_usage: bool = False, **kw: object
    ) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
        return self.d.chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params(**kw), include_usage=include_usage),  # type: ignore[arg-type]
            metadata=bearer(key),
        )


async def start(
    tmp_path: Path, sims: dict[str, SimConfig] | None = None, **options: object
) -> Tenanted:
    path = tmp_path / "tenants.yaml"
    issued = write_tenants(
        path,
        [
            tenant("acme", models=["small"]),
            tenant("tight", tpm=600, concurrent=1, tokens_burst=100),
            tenant("beta"),
        ],
    )
    d = await deploy(
        sims
        or {"sim-small": SimConfig(output_tokens=12), "sim-large": SimConfig(output_tokens=20)},
        tenancy=TenancyOptions(tenants_file=path, **options),  # type: ignore[arg-type]
    )
    return Tenanted(d, issued, path)


async def stop(t: Tenanted) -> None:
    await t.d.channel.close()
    await t.d.gateway.stop(0)
    for s in t.d.sidecars:
        await s.stop(0)


@pytest.fixture
async def tenanted(tmp_path: Path) -> AsyncIterator[Tenanted]:
    t = await start(tmp_path)
    yield t
    await stop(t)


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer nope"),), (("authorization", "Basic x"),)]
)
async def test_missing_or_unknown_key_is_unauthenticated(
    tenanted: Tenanted, metadata: tuple[tuple[str, str], ...]
) -> None:
    for call in (
        tenanted.d.chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params()), metadata=metadata
        ),
        tenanted.d.models.ListModels(pb.ListModelsRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = rpc_details(caught.value)["ErrorInfo"]
        assert info.reason == "invalid_api_key"  # type: ignore[attr-defined]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [
            m
            async for m in tenanted.d.chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=params()), metadata=metadata
            )
        ]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_never_appears_in_errors_or_logs(
    tenanted: Tenanted, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tenanted.keys["acme"][:-4] + "AAAA"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenanted.create(wrong)
    assert wrong not in str(caught.value.details()) and wrong[6:18] not in str(
        caught.value.details()
    )
    await tenanted.create(tenanted.keys["acme"], max_tokens=2)
    await tenanted.tenancy.admission.drain()
    for key in (wrong, tenanted.keys["acme"]):
        assert key not in caplog.text
        assert key.rsplit("_", 1)[1] not in caplog.text


async def test_model_outside_the_tenant_is_permission_denied_and_hidden(tenanted: Tenanted) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenanted.create(tenanted.keys["acme"], model="sim-large")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_details(caught.value)["ErrorInfo"].reason == "model_not_allowed"  # type: ignore[attr-defined]
    # Aliases resolve before the check: "small" is sim-small, allowed.
    assert (
        await tenanted.create(tenanted.keys["acme"], model="small", max_tokens=2)
    ).usage.completion_tokens == 2
    listed = await tenanted.d.models.ListModels(
        pb.ListModelsRequest(), metadata=bearer(tenanted.keys["acme"])
    )
    assert [m.id for m in listed.models] == ["sim-small"]
    everything = await tenanted.d.models.ListModels(
        pb.ListModelsRequest(), metadata=bearer(tenanted.keys["beta"])
    )
    assert {m.id for m in everything.models} == {"sim-small", "sim-large"}
    # An unknown model is still NOT_FOUND, not a permission question.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenanted.create(tenanted.keys["acme"], model="nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_admission_sends_rate_limit_metadata(tenanted: Tenanted) -> None:
    call = tenanted.create(tenanted.keys["beta"], max_tokens=5)
    await call
    md = dict(await call.initial_metadata())
    assert (
        md["x-ratelimit-limit-requests"] == "1000" and md["x-ratelimit-remaining-requests"] == "999"
    )
    assert md["x-ratelimit-limit-tokens"] == "1000000"
    assert 999_900 < int(md["x-ratelimit-remaining-tokens"]) < 1_000_000
    assert md["x-ratelimit-reset-requests"].endswith("ms")
    assert md["x-llmgw-model"] == "sim-small"  # the routing metadata still goes out with ours
    stream = tenanted.stream(tenanted.keys["beta"], max_tokens=3)
    assert len([m async for m in stream]) >= 3
    smd = dict(await stream.initial_metadata())
    assert smd["x-ratelimit-remaining-requests"] == "998" and "x-llmgw-backend" in smd


async def test_over_the_token_limit_is_resource_exhausted_with_quota_failure_and_retry_info(
    tenanted: Tenanted,
) -> None:
    key = tenanted.keys["tight"]  # 100-token burst, 10 tokens a second
    await tenanted.create(key, max_tokens=80)  # reserves ~90, then reconciles to the real ~20
    await tenanted.tenancy.admission.drain()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenanted.create(key, max_tokens=85)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = rpc_details(error)
    assert found["ErrorInfo"].reason == "rate_limit_exceeded"  # type: ignore[attr-defined]
    violation = found["QuotaFailure"].violations[0]  # type: ignore[attr-defined]
    assert violation.subject == "tenant:tight" and violation.description.startswith("tokens")
    wait = found["RetryInfo"].retry_delay.ToNanoseconds() / 1e9  # type: ignore[attr-defined]
    assert 0 < wait <= 10
    trailing = dict(error.trailing_metadata())
    assert trailing["x-ratelimit-limit-tokens"] == "600"
    assert int(trailing["x-ratelimit-remaining-tokens"]) < 105
    assert "Rate limit reached for tokens per min" in str(error.details())


async def test_a_request_larger_than_the_burst_says_so_without_retry(tenanted: Tenanted) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenanted.create(tenanted.keys["tight"], max_tokens=500)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = rpc_details(caught.value)
    assert found["ErrorInfo"].reason == "request_too_large"  # type: ignore[attr-defined]
    assert "RetryInfo" not in found


async def test_concurrency_cap_and_release_when_the_client_cancels(tmp_path: Path) -> None:
    t = await start(
        tmp_path, {"sim-small": SimConfig(output_tokens=200, itl_ms=20), "sim-large": SimConfig()}
    )
    try:
        key = t.keys["tight"]  # one request in flight at a time
        stream = t.stream(key, max_tokens=50)
        first = await stream.read()
        assert first.HasField("start")
        await stream.read()  # a token or two
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await t.create(key, max_tokens=1)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            rpc_details(caught.value)["QuotaFailure"]
            .violations[0]
            .description.startswith("concurrency")
        )  # type: ignore[attr-defined]
        stream.cancel()
        store = t.tenancy.limiter._store
        await wait_until(lambda: not store._tenants["tight"].leases)
        # Reconciled: the ~57 reserved tokens less the few generated went back to the bucket.
        level = store._tenants["tight"].tokens.level
        assert level > 100 - 57 + 30
        await t.tenancy.admission.drain()
        await t.tenancy.meter.flush()
        events = [e for e in t.tenancy.meter.store.events if e.tenant == "tight"]
        assert [e.status for e in events] == ["cancelled"] and not events[0].exact
        assert (await t.create(key, max_tokens=1)).usage.completion_tokens == 1  # the slot is free
    finally:
        await stop(t)


async def test_reconcile_uses_the_real_usage_and_meters_it(tenanted: Tenanted) -> None:
    reply = await tenanted.create(tenanted.keys["beta"], max_tokens=7)
    events_seen = [m async for m in tenanted.stream(tenanted.keys["beta"], max_tokens=4)]
    assert not events_seen[-1].end.HasField("usage")  # not asked for: not sent, though we needed it
    await tenanted.tenancy.admission.drain()
    await tenanted.tenancy.meter.flush()
    events = list(tenanted.tenancy.meter.store.events)
    assert [e.status for e in events] == ["ok", "ok"] and all(e.exact for e in events)
    assert events[0].request_id == reply.id and events[0].completion_tokens == 7
    assert events[0].prompt_tokens == reply.usage.prompt_tokens and events[0].backend
    assert events[1].completion_tokens == 4 and events[1].ttft_ms is not None
    # The bucket holds exactly the real usage: both reservations were reconciled.
    used = sum(e.prompt_tokens + e.completion_tokens for e in events)
    level = tenanted.tenancy.limiter._store._tenants["beta"].tokens.level
    assert 1_000_000 - used <= level < 1_000_000 - used + 100  # + refill since


async def test_a_failed_stream_is_reconciled_and_metered_as_an_error(tmp_path: Path) -> None:
    t = await start(
        tmp_path,
        {
            "sim-small": SimConfig(
                output_tokens=30,
                failure_mode=FailureMode.ERROR_AFTER_TOKENS,
                failure_after_tokens=5,
            ),
            "sim-large": SimConfig(),
        },
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            [m async for m in t.stream(t.keys["beta"], max_tokens=20)]
        await t.tenancy.admission.drain()
        await t.tenancy.meter.flush()
        (event,) = t.tenancy.meter.store.events
        assert event.status == "error" and not event.exact and event.completion_tokens >= 1
        assert not t.tenancy.limiter._store._tenants["beta"].leases
        # Invalid requests are refused by the domain: refunded whole, not metered.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await t.create(t.keys["beta"], temperature=5.0)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await t.tenancy.admission.drain()
        await t.tenancy.meter.flush()
        assert len(t.tenancy.meter.store.events) == 1
    finally:
        await stop(t)


async def test_usage_service_shows_a_tenant_only_its_own(tenanted: Tenanted) -> None:
    await tenanted.create(tenanted.keys["acme"], max_tokens=3)
    await tenanted.create(tenanted.keys["beta"], max_tokens=2)
    await tenanted.create(tenanted.keys["beta"], max_tokens=2)
    await tenanted.tenancy.admission.drain()
    await tenanted.tenancy.meter.flush()
    usage = usage_pb2_grpc.UsageServiceStub(tenanted.d.channel)
    own = await usage.GetUsage(usage_pb2.GetUsageRequest(), metadata=bearer(tenanted.keys["beta"]))
    (row,) = own.records
    assert (row.tenant, row.model, row.requests, row.completion_tokens) == (
        "beta",
        "sim-small",
        2,
        4,
    )
    assert (
        row.total_tokens == row.prompt_tokens + 4 and row.granularity == usage_pb2.GRANULARITY_DAY
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.GetUsage(
            usage_pb2.GetUsageRequest(tenant="acme"), metadata=bearer(tenanted.keys["beta"])
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    hourly = await usage.GetUsage(
        usage_pb2.GetUsageRequest(granularity=usage_pb2.GRANULARITY_HOUR),
        metadata=bearer(tenanted.keys["admin"]),
    )
    assert {(r.tenant, r.requests) for r in hourly.records} == {("acme", 1), ("beta", 2)}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.GetUsage(usage_pb2.GetUsageRequest(), metadata=())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage.GetUsage(
            usage_pb2.GetUsageRequest(start_time=10, end_time=5),
            metadata=bearer(tenanted.keys["admin"]),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_admin_keys_read_usage_and_admin_service_but_call_no_model(
    tenanted: Tenanted,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenanted.create(tenanted.keys["admin"])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = admin_pb2_grpc.AdminServiceStub(tenanted.d.channel)
    method = next(iter(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods))
    request_class = getattr(admin_pb2, method.input_type.name)
    call = getattr(admin, method.name)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request_class(), metadata=bearer(tenanted.keys["beta"]))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await call(request_class(), metadata=bearer(tenanted.keys["admin"]))


async def test_the_tenant_and_priority_reach_the_domain(tenanted: Tenanted) -> None:
    seen: list[tuple[str, int, frozenset[str] | None]] = []
    service = tenanted.d.gateway.service
    original = service.stream

    def spy(completion):  # type: ignore[no-untyped-def]
        seen.append((completion.tenant, completion.priority, completion.allowed))
        return original(completion)

    service.stream = spy  # type: ignore[method-assign]
    await tenanted.create(tenanted.keys["beta"], max_tokens=1)
    await tenanted.create(tenanted.keys["acme"], max_tokens=1)
    # Priority "standard"; beta may use every model, acme only sim-small.
    assert seen == [("beta", 1, None), ("acme", 1, frozenset({"sim-small"}))]


async def test_many_concurrent_calls_leave_no_lease_behind(tenanted: Tenanted) -> None:
    key = tenanted.keys["beta"]
    await asyncio.gather(*(tenanted.create(key, max_tokens=3) for _ in range(30)))
    await tenanted.tenancy.admission.drain()
    assert not tenanted.tenancy.limiter._store._tenants["beta"].leases
