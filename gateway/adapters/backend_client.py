"""gRPC client of the sidecars: one channel per endpoint, domain <-> backend proto."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.grpcutil.server import CHANNEL_OPTIONS
from common.grpcutil.status import parse_status
from common.grpcutil.tls import ClientTls, open_channel
from common.observability.tracing import grpc_client_interceptors
from gateway.adapters.backend_convert import (
    to_backend_request,
    to_choice_delta,
    to_embed_request,
)
from gateway.domain.chat import Finished, FinishReason, Generation, StreamEvent, Usage
from gateway.domain.embedding import EmbeddingJob
from gateway.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
    Violation,
)
from gateway.routing.endpoint import LoadSnapshot
from llmgw.backend.v1 import backend_pb2 as pb
from llmgw.backend.v1 import backend_pb2_grpc as pb_grpc

log = logging.getLogger("llmgw.gateway.backend")

_FINISH = {
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_CONTENT_FILTER: FinishReason.CONTENT_FILTER,
    pb.FINISH_REASON_TOOL_CALLS: FinishReason.TOOL_CALLS,
}


def backend_error(error: grpc.aio.AioRpcError, address: str) -> GatewayError:
    """Translate a sidecar's status into the gateway's errors.

    Invalid-argument statuses (a prompt longer than the context, say) are the
    client's fault and keep their message; everything else is reported
    without the sidecar's internals.
    """
    parsed = parse_status(error)
    code = parsed.code
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = [Violation(v.field, v.description) for v in parsed.field_violations] or [
            Violation("messages", parsed.message)
        ]
        return InvalidRequest(violations, reason=parsed.reason or "invalid_request")
    # Backend addresses and engine messages stay in our logs, out of client messages.
    log.warning("backend %s failed: %s %s", address, code.name, parsed.message)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return BackendUnavailable(
            "The model's backend is unavailable. Please retry.",
            retry_after_s=parsed.retry_after_s or 1.0,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout("The model's backend timed out.")
    return BackendFailed("The model's backend failed while generating.")


class GrpcBackendClient:
    """Streams generations from sidecars. Channels are created on first use
    and shared by all requests to one endpoint (HTTP/2 multiplexing)."""

    def __init__(self, tls: ClientTls | None = None) -> None:
        self._tls = tls  # TLS (and mTLS with a client certificate) to every sidecar
        self._stubs: dict[str, pb_grpc.BackendServiceStub] = {}
        self._health: dict[str, health_pb2_grpc.HealthStub] = {}
        self._channel_of: dict[str, grpc.aio.Channel] = {}
        self._channels: list[grpc.aio.Channel] = []

    def _stub(self, address: str) -> pb_grpc.BackendServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = open_channel(
                address, self._tls, CHANNEL_OPTIONS, interceptors=grpc_client_interceptors()
            )
            self._channels.append(channel)
            self._channel_of[address] = channel
            stub = self._stubs[address] = pb_grpc.BackendServiceStub(channel)
        return stub

    async def generate(
        self, address: str, generation: Generation
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream text then one Finished; closing this iterator cancels the sidecar call."""
        call = self._stub(address).Generate(to_backend_request(generation))
        try:
            async for message in call:
                # Per-token path: one field test, one small tuple beyond the str.
                if message.HasField("delta"):
                    delta = message.delta
                    yield (delta.text, delta.token_count)
                elif message.HasField("choice"):
                    yield to_choice_delta(message.choice)
                else:
                    done = message.finished
                    yield Finished(
                        _FINISH.get(done.finish_reason, FinishReason.STOP),
                        Usage(done.prompt_tokens, done.completion_tokens),
                        tuple(
                            _FINISH.get(r, FinishReason.STOP) for r in done.choice_finish_reasons
                        ),
                    )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, address) from None
        finally:
            # Reached on normal end, on error, and when our caller is cancelled
            # or closes us: in every case the sidecar must stop generating.
            call.cancel()

    async def embed(self, address: str, job: EmbeddingJob) -> AsyncGenerator[StreamEvent, None]:
        """One Embed call, as a stream of one Finished carrying the vectors; closing
        this iterator cancels the call."""
        call = self._stub(address).Embed(to_embed_request(job))
        try:
            answer = await call
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, address) from None
        finally:
            call.cancel()
        if len(answer.embeddings) != len(job.inputs):
            log.warning(
                "backend %s returned %d vectors for %d inputs",
                address,
                len(answer.embeddings),
                len(job.inputs),
            )
            raise BackendFailed("The model's backend returned a wrong number of vectors.")
        yield Finished(
            FinishReason.STOP,
            Usage(answer.prompt_tokens, 0),
            vectors=[list(v.values) for v in answer.embeddings],
        )

    async def is_serving(self, address: str, timeout_s: float) -> bool:
        """grpc.health.v1 Check of the sidecar (its engine's readiness)."""
        self._stub(address)  # make sure the channel exists
        health = self._health.get(address)
        if health is None:
            health = self._health[address] = health_pb2_grpc.HealthStub(self._channel_of[address])
        try:
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def load(self, address: str, timeout_s: float) -> LoadSnapshot | None:
        """The sidecar's load report, or None if it did not answer."""
        try:
            report = await self._stub(address).GetLoad(pb.GetLoadRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return None
        return LoadSnapshot(
            running=report.running,
            waiting=report.waiting,
            capacity=report.capacity,
            kv_cache_usage=report.kv_cache_usage if report.HasField("kv_cache_usage") else None,
        )

    async def forget(self, address: str) -> None:
        """Close the channel to ``address`` (discovery removed it and nothing is in flight)."""
        channel = self._channel_of.pop(address, None)
        self._stubs.pop(address, None)
        self._health.pop(address, None)
        if channel is not None:
            self._channels.remove(channel)
            await channel.close()

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close()
