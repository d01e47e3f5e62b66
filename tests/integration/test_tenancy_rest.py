"""Tenancy through the REST shim, driven by the official openai SDK: the same
key as gRPC, 401/403/429 as the SDK's error types, x-ratelimit-* headers on
every completion, Retry-After, /v1/models filtered, GET /v1/usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from backends.engines.sim import SimConfig
from gateway.tenancy.runtime import TenancyOptions
from tests.conftest import deploy
from tests.shim_stack import ShimStack, shim_in_front
from tests.tenancy_helpers import tenant, write_tenants

HELLO = [{"role": "user", "content": "hello gateway world"}]
LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ShimStack]:
    path = tmp_path / "tenants.yaml"
    keys = write_tenants(
        path,
        [
            tenant("acme", models=["small"]),
            tenant("tight", rpm=60, requests_burst=2, tpm=100_000),
            tenant("beta"),
            # A full bucket of 1000 that refills one request a minute: the remaining
            # count the headers give is exact however slowly the machine runs.
            tenant("steady", rpm=1, requests_burst=1000),
        ],
    )
    d = await deploy(
        {"sim-small": SimConfig(output_tokens=12), "sim-large": SimConfig(output_tokens=20)},
        tenancy=TenancyOptions(tenants_file=path),
    )
    async with shim_in_front(d, keys) as stack:
        yield stack


async def test_missing_or_wrong_key_is_401_invalid_api_key(stack: ShimStack) -> None:
    async with stack.client("llmgw_000000000000_wrongwrongwrongwrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="small", messages=HELLO)  # type: ignore[arg-type]
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        assert "wrongwrong" not in caught.value.message
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    async with httpx.AsyncClient(base_url=stack.shim.base_url) as http:
        answer = await http.post("/v1/chat/completions", json={"model": "small", "messages": HELLO})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"


async def test_a_model_outside_the_tenant_is_403_and_unlisted(stack: ShimStack) -> None:
    async with stack.client(stack.keys["acme"]) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model="sim-large", messages=HELLO)  # type: ignore[arg-type]
        assert caught.value.code == "model_not_allowed"
        assert [m.id for m in (await client.models.list()).data] == ["sim-small"]
        reply = await client.chat.completions.create(model="small", messages=HELLO, max_tokens=3)  # type: ignore[arg-type]
        assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_every_completion_carries_rate_limit_headers(stack: ShimStack) -> None:
    async with stack.client(stack.keys["steady"]) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="small",
            messages=HELLO,
            max_tokens=3,  # type: ignore[arg-type]
        )
        assert all(h in raw.headers for h in LIMIT_HEADERS)
        assert raw.headers["x-ratelimit-limit-requests"] == "1"  # per minute, not the burst
        assert raw.headers["x-ratelimit-remaining-requests"] == "999"
        assert raw.parse().choices[0].message.content
        async with client.chat.completions.with_streaming_response.create(
            model="small",
            messages=HELLO,
            max_tokens=3,
            stream=True,  # type: ignore[arg-type]
        ) as streamed:
            assert streamed.headers["x-ratelimit-remaining-requests"] == "998"
            assert all(h in streamed.headers for h in LIMIT_HEADERS)
            chunks = [c async for c in await streamed.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_over_the_limit_is_429_rate_limit_exceeded_with_retry_after(stack: ShimStack) -> None:
    async with stack.client(stack.keys["tight"]) as client:
        for _ in range(2):  # the burst of two requests
            await client.chat.completions.create(model="small", messages=HELLO, max_tokens=1)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="small", messages=HELLO, max_tokens=1, stream=True
            )  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.type == "rate_limit_error" or (error.body or {}).get("type") == "rate_limit_error"  # type: ignore[union-attr]
    assert "Rate limit reached for requests per min" in error.message
    headers = error.response.headers
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "60"


async def test_get_usage_shows_the_tenant_its_own_and_the_admin_all(stack: ShimStack) -> None:
    async with stack.client(stack.keys["beta"]) as client:
        await client.chat.completions.create(model="small", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    async with stack.client(stack.keys["acme"]) as client:
        await client.chat.completions.create(model="small", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    assert stack.d.gateway.tenancy is not None
    await stack.d.gateway.tenancy.admission.drain()
    await stack.d.gateway.tenancy.meter.flush()
    async with httpx.AsyncClient(base_url=stack.shim.base_url) as http:

        async def usage(key: str, **query: str) -> httpx.Response:
            return await http.get(
                "/v1/usage", params=query, headers={"authorization": f"Bearer {key}"}
            )

        own = (await usage(stack.keys["beta"])).json()["data"]
        assert [(r["tenant"], r["model"], r["requests"], r["completion_tokens"]) for r in own] == [
            ("beta", "sim-small", 1, 2)
        ]
        assert own[0]["granularity"] == "day" and own[0]["total_tokens"] > 2
        assert (await usage(stack.keys["beta"], tenant="acme")).status_code == 403
        everyone = (await usage(stack.keys["admin"], granularity="hour")).json()["data"]
        assert {r["tenant"] for r in everyone} == {"acme", "beta"}
        assert (await usage("nope")).status_code == 401
        bad = await usage(stack.keys["admin"], granularity="week")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "granularity"
