"""OpenTelemetry tracing: OTLP export when configured, free when not.

Configured by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_SERVICE_NAME``). With none
set the API's no-op tracer stays in place: spans cost a few attribute-free
calls per request and nothing per token. W3C ``traceparent`` travels in
gRPC metadata and HTTP headers. Prompt text is never put on a span.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_configured = False


def tracing_enabled() -> bool:
    """Whether an OTLP endpoint is configured for this process."""
    return any(os.environ.get(name) for name in _ENDPOINT_VARS)


def configure_tracing(service_name: str) -> None:
    """Install an OTLP-exporting tracer provider if an endpoint is configured."""
    global _configured
    if _configured or not tracing_enabled():
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def shutdown_tracing() -> None:
    """Flush pending spans (at process exit)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def tracer(name: str) -> trace.Tracer:
    """A tracer for one component."""
    return trace.get_tracer(name)


def inject_metadata(metadata: Iterable[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus the current trace context (traceparent), for an outgoing call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to outgoing HTTP headers (in place)."""
    propagate.inject(headers)
    return headers


def extract_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Context:
    """The trace context sent by the caller in gRPC metadata."""
    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    return propagate.extract(carrier)


def extract_headers(headers: Mapping[str, str]) -> Context:
    """The trace context sent by the caller in HTTP headers."""
    return propagate.extract(dict(headers))


def grpc_server_interceptors() -> list[Any]:
    """OpenTelemetry's grpc.aio server interceptor when tracing is on, else none:
    it wraps every streamed message, a cost worth paying only when traces go somewhere."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_request_path_only())]  # type: ignore[no-untyped-call]


def grpc_client_interceptors() -> list[Any] | None:
    """OpenTelemetry's grpc.aio client interceptors when tracing is on (they inject
    traceparent into each call's metadata), else None."""
    if not tracing_enabled():
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_request_path_only()))  # type: ignore[no-untyped-call]


def _request_path_only() -> Any:
    """Leave background calls out of traces: health checks, load polls, reflection
    (each would be a one-span trace every second)."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(
            filters.health_check(),
            filters.method_name("GetLoad"),
            filters.service_prefix("grpc.reflection"),
        )
    )
