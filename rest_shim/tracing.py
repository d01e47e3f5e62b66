"""The shim's request span: the root (or continuation) of a request's trace.

Only used when tracing is configured: the span is current while the gRPC
call to the gateway starts, so OpenTelemetry's gRPC client interceptor
sends its traceparent on, and it ends when the HTTP response is done.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from observability.tracing import extract_headers, tracer

_TRACER = tracer("llmgw.shim")


class TracedResponse(Response):
    """Runs ``inner`` inside a SERVER span named after the route."""

    def __init__(self, inner: Response, request: Request, model: str, stream: bool) -> None:
        super().__init__()
        self._inner = inner
        self._span = _TRACER.start_span(
            f"{request.method} {request.url.path}",
            context=extract_headers(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.path": request.url.path,
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model[:128],
                "llmgw.stream": stream,
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Relay the inner response, recording its status on the span."""
        span = self._span

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
                headers = dict(message.get("headers", ()))
                served = headers.get(b"x-llmgw-model")
                if served:
                    span.set_attribute("gen_ai.response.model", served.decode())
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self._inner(scope, receive, recording_send)
        finally:
            otel_context.detach(token)
            span.end()
