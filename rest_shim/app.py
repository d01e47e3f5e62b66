"""The FastAPI app: OpenAI routes over the gateway's gRPC API."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from common.grpcutil.server import CHANNEL_OPTIONS, ROUND_ROBIN
from common.grpcutil.tls import ClientTls, open_channel
from common.observability.tracing import grpc_client_interceptors
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from llmgw.v1 import completions_pb2_grpc, embeddings_pb2_grpc
from rest_shim.asgi_responses import CompletionResponse, CompletionStreamResponse, ErrorResponse
from rest_shim.auth_guard import AuthGuard
from rest_shim.completions import router as completions_router
from rest_shim.decoding import BodyDecoder, decode_chat
from rest_shim.drain import DrainMiddleware, is_draining
from rest_shim.embeddings import router as embeddings_router
from rest_shim.errors import ApiError
from rest_shim.headers import add_cors
from rest_shim.http import forwarded_metadata, json_response, read_body
from rest_shim.metrics import MetricsMiddleware
from rest_shim.models import router as models_router
from rest_shim.request_id import RequestIdMiddleware, request_id_of
from rest_shim.request_limits import RequestLimits
from rest_shim.settings import ShimSettings
from rest_shim.usage import router as usage_router


class GatewayClient:
    """The shim's gRPC stubs to the gateway, over ``channels`` channels.

    Each chat call takes the next channel in turn, and within a channel gRPC's
    ``round_robin`` policy takes the next address of the target (``dns:///name``
    resolving to every gateway pod of a headless Service, or ``ipv4:A,B`` naming
    every gateway worker's own address): requests, not connections, are spread.
    Several channels also spread one gateway address over several connections
    (with SO_REUSEPORT workers, the kernel places each connection).
    """

    def __init__(self, target: str, channels: int = 1, tls: ClientTls | None = None) -> None:
        options = (
            *CHANNEL_OPTIONS,
            ("grpc.service_config", ROUND_ROBIN),
            # Each channel its own connections, not subchannels shared process-wide.
            ("grpc.use_local_subchannel_pool", 1),
        )
        self.channels = [
            open_channel(target, tls, options, interceptors=grpc_client_interceptors())
            for _ in range(channels)
        ]
        self.channel = self.channels[0]
        self._chat = itertools.cycle([pb_grpc.ChatServiceStub(c) for c in self.channels])
        self.models = pb_grpc.ModelServiceStub(self.channel)
        self.completions = completions_pb2_grpc.CompletionServiceStub(self.channel)
        self.embeddings = embeddings_pb2_grpc.EmbeddingServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def chat(self) -> pb_grpc.ChatServiceStub:
        """The chat stub of the next channel (round robin per call)."""
        return next(self._chat)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self.channels:
            await channel.close()


def create_app(settings: ShimSettings | None = None) -> FastAPI:
    """Build the shim for one gateway address."""
    settings = settings or ShimSettings()

    decoder = BodyDecoder()  # large bodies are decoded off the event loop

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = GatewayClient(
            settings.gateway, settings.gateway_channels, settings.gateway_tls()
        )
        yield
        decoder.close()
        await app.state.gateway.close()

    app = FastAPI(
        title="llmgw OpenAI-compatible API",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own request span, on the provider common.observability.tracing set up
        # (if any); our metrics and logs stay ours. The span is current while the
        # gRPC call starts, so the gateway's span becomes its child.
        telemetry={
            "auto_configure": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
        },
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> Response:
        return ErrorResponse(error, request_id_of(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            return ErrorResponse(
                ApiError(404, message, "invalid_request_error", code="unknown_url"),
                request_id_of(request.scope),
            )
        # Starlette's own headers (Allow on a 405) stay.
        return ErrorResponse(
            ApiError(
                error.status_code,
                str(error.detail),
                "invalid_request_error",
                extra_headers=dict(error.headers or {}),
            ),
            request_id_of(request.scope),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        # Never a traceback to the client; the server log has it.
        return ErrorResponse(
            ApiError(500, "The server had an error while processing your request.", "server_error"),
            request_id_of(request.scope),
        )

    app.add_middleware(DrainMiddleware)  # innermost: answers what the shutdown cuts off
    if settings.require_api_key:
        # Inside the metrics middleware, so refusals are counted too.
        app.add_middleware(AuthGuard, max_bytes=settings.max_api_key_bytes)
    app.add_middleware(MetricsMiddleware)
    limits = RequestLimits(
        max_messages=settings.max_messages, max_content_parts=settings.max_content_parts
    )
    add_cors(app, settings.cors_origins)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id
    # Read by the route modules: settings, caps and the body decoder of the process.
    app.state.settings = settings
    app.state.limits = limits
    app.state.decoder = decoder

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await read_body(request, settings.max_body_bytes)
        body, params = await decoder.run(decode_chat, raw, limits)
        gateway: GatewayClient = request.app.state.gateway
        metadata = forwarded_metadata(request)
        timeout = settings.request_timeout_s
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream_request = pb.StreamChatCompletionRequest(
                params=params, include_usage=include_usage
            )
            return CompletionStreamResponse(
                lambda: gateway.chat.StreamChatCompletion(
                    stream_request, metadata=metadata, timeout=timeout
                ),
                include_usage,
                settings.sse_keepalive_s,
                choices=max(1, body.n or 1),
                logprobs=bool(body.logprobs),
            )
        if body.stream_options is not None:
            raise ApiError(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                param="stream_options",
            )
        unary_request = pb.CreateChatCompletionRequest(params=params)
        return CompletionResponse(
            lambda: gateway.chat.CreateChatCompletion(
                unary_request, metadata=metadata, timeout=timeout
            ),
            logprobs=bool(body.logprobs),
        )

    app.include_router(models_router)
    app.include_router(completions_router)
    app.include_router(embeddings_router)
    app.include_router(usage_router)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        if is_draining(request.scope):
            return json_response({"status": "shutting down"}, status_code=503)
        gateway: GatewayClient = request.app.state.gateway
        try:
            answer = await gateway.health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return json_response({"status": "gateway unreachable"}, status_code=503)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return json_response({"status": "gateway not serving"}, status_code=503)
        return json_response({"status": "ready"})

    return app
