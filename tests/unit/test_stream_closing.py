"""Wrappers that relay an inner async generator close it when they are closed.

Closing the outer stream (a client gone, a stream the caller stops reading)
must end the inner one at once: its ``finally`` aborts an engine request or
cancels a backend call. Without ``aclosing`` the inner generator is only
finalized later, by the loop's async-generator hook or the garbage collector.
Each test closes the outer stream at a yield and checks, with no further loop
turn, that the inner one has ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import REGISTRY

from backends.engine import EngineRequest
from backends.engines.sim import SimConfig, SimEngine
from backends.metered import EngineLoadCollector, MeteredEngine
from common.grpcutil.malformed import MalformedRequestInterceptor
from gateway.transport.origin import local_only


class Inner:
    """An inner server-streaming behaviour that notes when it ended."""

    def __init__(self) -> None:
        self.ended = False

    async def __call__(self, request: object, context: object) -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            self.ended = True


class LocalContext:
    """The two things local_only reads of a servicer context: a loopback caller."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> tuple[()]:
        return ()


async def close_after_one(stream: Any) -> None:
    await anext(stream)
    await stream.aclose()


async def test_closing_the_metered_engine_stream_aborts_the_engine_at_once() -> None:
    sim = SimEngine(SimConfig(max_concurrency=1, itl_ms=1, output_tokens=1000))
    engine = MeteredEngine(sim, "closing-test")
    try:
        request = EngineRequest(request_id="r", model="m", messages=(), max_tokens=1000)
        await close_after_one(engine.generate(request))
        assert sim.active == 0 and sim.aborted == 1
    finally:  # the collector registered for this engine only
        for collector in list(REGISTRY._collector_to_names):
            if isinstance(collector, EngineLoadCollector) and collector._engine is sim:
                REGISTRY.unregister(collector)


async def test_closing_a_stream_guarded_against_malformed_requests_closes_the_handler() -> None:
    inner = Inner()
    handler = grpc.unary_stream_rpc_method_handler(inner)

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    details: Any = type("Details", (), {"method": "/s/M", "invocation_metadata": ()})()
    wrapped: Any = await MalformedRequestInterceptor().intercept_service(continuation, details)
    await close_after_one(wrapped.unary_stream(object(), LocalContext()))
    assert inner.ended


async def test_closing_a_local_only_stream_closes_the_handler() -> None:
    inner = Inner()
    wrapped: Any = local_only(grpc.unary_stream_rpc_method_handler(inner))
    await close_after_one(wrapped.unary_stream(object(), LocalContext()))
    assert inner.ended
