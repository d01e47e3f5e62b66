"""Schema-driven requests (schemathesis) against the running shim: every operation
the shim serves, with bodies generated from OpenAI's own OpenAPI document, must
answer without a server error and within a bounded time. A small, fixed number
of examples per operation keeps `make test` fast; raise FUZZ_EXAMPLES locally
for a longer run."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from backends.engines.sim import SimConfig
from tests.compat.openapi import SPEC_PATH
from tests.conftest import ANY_KEY, deploy, start_shim

OPERATIONS = {
    "/chat/completions": "post",
    "/completions": "post",
    "/embeddings": "post",
    "/models": "get",
}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
REQUEST_TIMEOUT_S = 30.0


class BackgroundStack:
    """Sidecars, gateway and shim on an event loop of their own thread, so the
    synchronous schemathesis client can call the shim over real HTTP."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stop: Any = None
        self.base_url = self._run(self._start())

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=120)

    async def _start(self) -> str:
        d = await deploy(
            {"sim-small": SimConfig(output_tokens=8), "sim-large": SimConfig(output_tokens=8)}
        )
        shim, task = await start_shim(d.address)

        async def stop() -> None:
            shim.server.should_exit = True
            await task
            await d.channel.close()
            await d.gateway.stop(0)
            for s in d.sidecars:
                await s.stop(0)

        self._stop = stop
        return shim.base_url + "/v1"

    def close(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[BackgroundStack]:
    s = BackgroundStack()
    yield s
    s.close()


def _schema(base_url: str) -> Any:
    spec = json.loads(SPEC_PATH.read_text())
    paths = {path: {m: spec["paths"][path][m]} for path, m in OPERATIONS.items()}
    document = {**spec, "paths": paths, "servers": [{"url": base_url}]}
    return schemathesis.openapi.from_dict(document)


@pytest.mark.skipif(not SPEC_PATH.exists(), reason="the OpenAI OpenAPI spec is not beside the repo")
@pytest.mark.parametrize("path", list(OPERATIONS))
def test_schema_driven_requests_get_no_server_error(stack: BackgroundStack, path: str) -> None:
    operation = _schema(stack.base_url)[path][OPERATIONS[path].upper()]
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "small"  # a served model: past routing, into validation
        began = time.monotonic()
        response = case.call(base_url=stack.base_url, headers=ANY_KEY, timeout=REQUEST_TIMEOUT_S)
        took = time.monotonic() - began
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text[:500])
        assert took < REQUEST_TIMEOUT_S
        content_type = (response.headers.get("content-type") or [""])[0]
        if content_type.startswith("application/json"):
            body = response.json()
            if response.status_code >= 400:
                assert set(body["error"]) >= {"message", "type", "param", "code"}

    run()
    print(f"{path}: statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= 1
