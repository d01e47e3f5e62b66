"""The FastAPI app: OpenAI routes over the gateway's gRPC API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import orjson
from fastapi import FastAPI, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from common.grpcutil.server import CHANNEL_OPTIONS
from common.observability.tracing import grpc_client_interceptors
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from rest_shim.asgi_responses import CompletionResponse, CompletionStreamResponse, ErrorResponse
from rest_shim.auth_guard import AuthGuard, gateway_metadata
from rest_shim.decoding import BodyDecoder, decode_chat
from rest_shim.drain import DrainMiddleware, is_draining
from rest_shim.errors import ApiError, from_grpc_error
from rest_shim.headers import add_cors
from rest_shim.metrics import MetricsMiddleware
from rest_shim.request_id import RequestIdMiddleware, request_id_of
from rest_shim.request_limits import RequestLimits
from rest_shim.settings import ShimSettings
from rest_shim.usage import router as usage_router

# Headers forwarded to the gateway as gRPC metadata besides the credential
# (x-session-id keeps a conversation on one replica for its prefix cache).
_FORWARDED_HEADERS = ("x-session-id",)


def _metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """The credential, the other forwarded headers that gRPC metadata can carry, and
    the request id (the gateway logs it)."""
    forwarded = tuple(
        (h, v)
        for h in _FORWARDED_HEADERS
        if (v := request.headers.get(h)) is not None and v.isascii() and v.isprintable()
    )
    request_id = ("x-request-id", request_id_of(request.scope))
    return (*gateway_metadata(request), *forwarded, request_id)


class GatewayClient:
    """The shim's gRPC stubs on one shared channel to the gateway."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS, interceptors=grpc_client_interceptors()
        )
        self.chat = pb_grpc.ChatServiceStub(self.channel)
        self.models = pb_grpc.ModelServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes of body; 413 beyond, before reading it all."""
    declared = request.headers.get("content-length")
    too_large = ApiError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        "invalid_request_error",
        code="request_too_large",
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(data: object, status_code: int = 200) -> Response:
    """JSON via orjson (FastAPI's own encoder is not needed for these fixed shapes)."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def create_app(settings: ShimSettings | None = None) -> FastAPI:
    """Build the shim for one gateway address."""
    settings = settings or ShimSettings()

    decoder = BodyDecoder()  # large bodies are decoded off the event loop

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = GatewayClient(settings.gateway)
        yield
        decoder.close()
        await app.state.gateway.channel.close()

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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await read_body(request, settings.max_body_bytes)
        body, params = await decoder.run(decode_chat, raw, limits)
        gateway: GatewayClient = request.app.state.gateway
        metadata = _metadata(request)
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

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        gateway: GatewayClient = request.app.state.gateway
        try:
            listed = await gateway.models.ListModels(
                pb.ListModelsRequest(), metadata=_metadata(request), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return ErrorResponse(from_grpc_error(error), request_id_of(request.scope))
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
                    for m in listed.models
                ],
            }
        )

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
