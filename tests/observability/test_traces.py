"""One request through shim -> gateway -> sidecar produces one trace whose
spans, exported over OTLP by three processes, link parent to child."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.observability.stack import KEYS, SECRET_PROMPT, ObservedStack, start_stack

pytestmark = pytest.mark.slow


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    from concurrent import futures

    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


@pytest.fixture
def traced_stack(collector: tuple[Collector, int], tmp_path: Path) -> Iterator[ObservedStack]:
    _, port = collector
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    stack = start_stack(tmp_path, env=env)
    try:
        yield stack
    finally:
        stack.stop()


def test_one_request_is_one_trace_across_every_hop(
    collector: tuple[Collector, int], traced_stack: ObservedStack
) -> None:
    received, _ = collector
    client = openai.OpenAI(
        base_url=traced_stack.base_url + "/v1", api_key=KEYS["acme"], max_retries=0
    )
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": SECRET_PROMPT}], stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason
    K = trace_pb2.Span
    chat_method = "/llmgw.v1.ChatService/StreamChatCompletion"
    backend_method = "/llmgw.backend.v1.BackendService/Generate"
    # Every span read below; each process exports on its own schedule, so wait for all.
    wanted = {
        ("llmgw-shim", "POST /v1/chat/completions", K.SPAN_KIND_SERVER),
        ("llmgw-shim", chat_method, K.SPAN_KIND_CLIENT),
        ("llmgw-gateway", chat_method, K.SPAN_KIND_SERVER),
        ("llmgw-gateway", "llmgw.route", K.SPAN_KIND_INTERNAL),
        ("llmgw-gateway", backend_method, K.SPAN_KIND_CLIENT),
        ("llmgw-sidecar", backend_method, K.SPAN_KIND_SERVER),
        ("llmgw-sidecar", "llmgw.engine/generate", K.SPAN_KIND_INTERNAL),
    }
    deadline = time.monotonic() + 30
    trace_id = b""
    while time.monotonic() < deadline:
        chat = [s for _, s in received.spans if s.name == "POST /v1/chat/completions"]
        if chat:
            trace_id = chat[-1].trace_id
            seen = {(svc, s.name, s.kind) for svc, s in received.spans if s.trace_id == trace_id}
            if seen >= wanted:
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"incomplete trace: {[(svc, s.name) for svc, s in received.spans]}")

    spans = {(svc, s.name, s.kind): s for svc, s in received.spans if s.trace_id == trace_id}
    by_id = {s.span_id: (svc, name) for (svc, name, _), s in spans.items()}

    def parent(service: str, name: str, kind: int) -> tuple[str, str] | None:
        span = spans[(service, name, kind)]
        return by_id.get(span.parent_span_id) if span.parent_span_id else None

    assert parent("llmgw-shim", "POST /v1/chat/completions", K.SPAN_KIND_SERVER) is None  # the root
    assert parent("llmgw-shim", chat_method, K.SPAN_KIND_CLIENT) == (
        "llmgw-shim",
        "POST /v1/chat/completions",
    )
    assert parent("llmgw-gateway", chat_method, K.SPAN_KIND_SERVER) == ("llmgw-shim", chat_method)
    assert parent("llmgw-gateway", "llmgw.route", K.SPAN_KIND_INTERNAL) == (
        "llmgw-gateway",
        chat_method,
    )
    assert parent("llmgw-gateway", backend_method, K.SPAN_KIND_CLIENT) == (
        "llmgw-gateway",
        chat_method,
    )
    assert parent("llmgw-sidecar", backend_method, K.SPAN_KIND_SERVER) == (
        "llmgw-gateway",
        backend_method,
    )
    assert parent("llmgw-sidecar", "llmgw.engine/generate", K.SPAN_KIND_INTERNAL) == (
        "llmgw-sidecar",
        backend_method,
    )

    gateway = spans[("llmgw-gateway", chat_method, K.SPAN_KIND_SERVER)]
    attributes = {a.key: a.value for a in gateway.attributes}
    assert attributes["gen_ai.request.model"].string_value == "fast"
    assert attributes["llmgw.tenant"].string_value == "acme"
    assert attributes["gen_ai.usage.output_tokens"].int_value == 12
    assert attributes["llmgw.backend"].string_value.startswith("127.0.0.1:")
    everything = str([s for _, s in received.spans])
    assert SECRET_PROMPT not in everything and KEYS["acme"] not in everything


def test_without_an_endpoint_nothing_is_traced() -> None:
    # The default: the API's no-op provider, and no gRPC interceptors at all.
    from common.observability.tracing import (
        grpc_client_interceptors,
        grpc_server_interceptors,
        tracing_enabled,
    )

    assert not tracing_enabled()
    assert grpc_client_interceptors() is None and grpc_server_interceptors() == []
