"""The public gRPC API against real gateway and sidecar servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backends.engines.sim import FailureMode, SimConfig
from llmgw.v1 import chat_pb2 as pb
from tests.conftest import Deployment, deploy, params, user, wait_until
from tests.grpc_details import rpc_details


async def collect(call: grpc.aio.UnaryStreamCall) -> list[pb.StreamChatCompletionResponse]:  # type: ignore[type-arg]
    return [m async for m in call]


async def test_unary_completion_returns_text_usage_and_model(deployment: Deployment) -> None:
    reply = await deployment.chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=params("small", "one two three", max_tokens=5))
    )
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "sim-small"  # the alias resolved to the model name
    assert reply.message.role == pb.ROLE_ASSISTANT
    assert len(reply.message.content.split()) == 5
    assert set(reply.message.content.split()) <= {"one", "two", "three"}
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5 > 5


async def test_stream_is_start_deltas_end_with_usage(deployment: Deployment) -> None:
    events = await collect(
        deployment.chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params("sim-large"), include_usage=True)
        )
    )
    kinds = [e.WhichOneof("event") for e in events]
    # Tokens produced faster than they are sent may be merged into one delta.
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert set(kinds[1:-1]) == {"delta"}
    assert events[0].start.model == "sim-large"
    assert events[-1].end.finish_reason == pb.FINISH_REASON_STOP
    assert events[-1].end.usage.completion_tokens == 20
    text = "".join(e.delta.content for e in events[1:-1])
    assert len(text.split()) == 20
    unary = await deployment.chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=params("sim-large"))
    )
    assert unary.message.content == text  # deterministic from the prompt


async def test_tokens_slower_than_the_writer_are_sent_one_by_one() -> None:
    d = await deploy({"sim-small": SimConfig(itl_ms=25, output_tokens=5)})
    try:
        events = await collect(
            d.chat.StreamChatCompletion(pb.StreamChatCompletionRequest(params=params()))
        )
        assert [e.WhichOneof("event") for e in events] == ["start"] + ["delta"] * 5 + ["end"]
    finally:
        await d.gateway.stop(0)
        await d.sidecars[0].stop(0)


async def test_usage_is_left_out_unless_asked(deployment: Deployment) -> None:
    events = await collect(
        deployment.chat.StreamChatCompletion(pb.StreamChatCompletionRequest(params=params()))
    )
    assert not events[-1].end.HasField("usage")


async def test_default_max_tokens_comes_from_the_model_config(deployment: Deployment) -> None:
    deployment.engines["sim-small"].config.output_tokens = 500
    reply = await deployment.chat.CreateChatCompletion(
        pb.CreateChatCompletionRequest(params=params())
    )
    assert reply.usage.completion_tokens == 32
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize(
    ("request_params", "field"),
    [
        (pb.ChatCompletionParams(model="small"), "messages"),
        (
            pb.ChatCompletionParams(model="small", messages=[pb.ChatMessage(content="x")]),
            "messages[0].role",
        ),
        (params(n=129), "n"),
        (params(max_tokens=-5), "max_tokens"),
        (params(max_tokens=0), "max_tokens"),
        (params(max_tokens=10**9), "max_tokens"),
        (params(max_completion_tokens=5000), "max_completion_tokens"),
        (params(temperature=3.5), "temperature"),
        (params(top_p=0), "top_p"),
        (params(presence_penalty=-9), "presence_penalty"),
        (params(stop=["a", "b", "c", "d", "e"]), "stop"),
        (pb.ChatCompletionParams(messages=[user("x")]), "model"),
    ],
)
async def test_invalid_requests_are_invalid_argument_with_field_violations(
    deployment: Deployment, request_params: pb.ChatCompletionParams, field: str
) -> None:
    for call in (
        deployment.chat.CreateChatCompletion(pb.CreateChatCompletionRequest(params=request_params)),
        collect(
            deployment.chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=request_params)
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = rpc_details(caught.value)
        assert [v.field for v in found["BadRequest"].field_violations][0] == field  # type: ignore[attr-defined]
        assert found["ErrorInfo"].domain == "llmgw"  # type: ignore[attr-defined]
    assert deployment.engines["sim-small"].started == 0  # nothing reached an engine


async def test_every_violation_is_reported_at_once(deployment: Deployment) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await deployment.chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params(n=300, temperature=-1, top_p=2))
        )
    fields = {v.field for v in rpc_details(caught.value)["BadRequest"].field_violations}  # type: ignore[attr-defined]
    assert fields == {"n", "temperature", "top_p"}


async def test_unknown_model_is_not_found_with_reason(deployment: Deployment) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await deployment.chat.CreateChatCompletion(
            pb.CreateChatCompletionRequest(params=params("gpt-17"))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-17" in (caught.value.details() or "")
    assert rpc_details(caught.value)["ErrorInfo"].reason == "model_not_found"  # type: ignore[attr-defined]


async def test_prompt_longer_than_context_is_invalid_argument_from_the_engine(
    deployment: Deployment,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(
            deployment.chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=params(content="word " * 40_000))
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum context length" in (caught.value.details() or "")


async def test_failure_before_first_token_is_a_status_without_messages() -> None:
    d = await deploy({"sim-small": SimConfig(failure_mode=FailureMode.ERROR_AT_START)})
    try:
        call = d.chat.StreamChatCompletion(pb.StreamChatCompletionRequest(params=params()))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in call:
                received.append(message)
        assert received == []
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert rpc_details(caught.value)["ErrorInfo"].reason == "backend_failed"  # type: ignore[attr-defined]
        assert "injected" not in (caught.value.details() or "")  # no backend internals leak
    finally:
        await d.gateway.stop(0)
        await d.sidecars[0].stop(0)


async def test_failure_mid_stream_ends_with_an_error_status_not_ok() -> None:
    d = await deploy(
        {
            "sim-small": SimConfig(
                failure_mode=FailureMode.ERROR_AFTER_TOKENS, failure_after_tokens=3
            )
        }
    )
    try:
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for m in d.chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=params())
            ):
                received.append(m)
        assert received[0].HasField("start")
        assert all(m.HasField("delta") for m in received[1:])  # never an "end"
        assert len("".join(m.delta.content for m in received[1:]).split()) == 3
        assert caught.value.code() == grpc.StatusCode.INTERNAL
    finally:
        await d.gateway.stop(0)
        await d.sidecars[0].stop(0)


async def test_unreachable_backend_is_unavailable(deployment: Deployment) -> None:
    d = await deploy({}, extra=[{"name": "ghost", "endpoints": ["127.0.0.1:1"]}])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await d.chat.CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params("ghost"))
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_details(caught.value)["RetryInfo"].retry_delay.seconds >= 1  # type: ignore[attr-defined]
    finally:
        await d.gateway.stop(0)


async def test_client_cancel_reaches_the_engine() -> None:
    d = await deploy({"sim-small": SimConfig(itl_ms=50, output_tokens=1000)})
    engine = d.engines["sim-small"]
    try:
        call = d.chat.StreamChatCompletion(
            pb.StreamChatCompletionRequest(params=params(max_tokens=1000))
        )
        assert (await call.read()).HasField("start")
        assert engine.active == 1
        call.cancel()
        # Far sooner than the 50 s the answer would take: the engine was aborted.
        took = await wait_until(lambda: engine.active == 0, timeout=10)
        print(f"cancel reached the engine in {took * 1000:.1f} ms")
        assert engine.aborted == 1
    finally:
        await d.gateway.stop(0)
        await d.sidecars[0].stop(0)


async def test_cancel_before_first_token_reaches_the_engine() -> None:
    d = await deploy({"sim-small": SimConfig(failure_mode=FailureMode.HANG)})
    engine = d.engines["sim-small"]
    try:
        call = d.chat.StreamChatCompletion(pb.StreamChatCompletionRequest(params=params()))
        await wait_until(lambda: engine.active == 1)
        call.cancel()
        await wait_until(lambda: engine.active == 0)  # it hangs: only an abort ends it
        assert engine.aborted == 1
    finally:
        await d.gateway.stop(0)
        await d.sidecars[0].stop(0)


async def test_client_deadline_bounds_the_call_and_aborts_the_engine() -> None:
    d = await deploy({"sim-small": SimConfig(failure_mode=FailureMode.HANG)})
    engine = d.engines["sim-small"]
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await d.chat.CreateChatCompletion(
                pb.CreateChatCompletionRequest(params=params()), timeout=0.3
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(lambda: engine.active == 0)  # it hangs: only an abort ends it
    finally:
        await d.gateway.stop(0)
        await d.sidecars[0].stop(0)


async def test_concurrent_streams_share_the_engine(deployment: Deployment) -> None:
    async def one(i: int) -> str:
        events = await collect(
            deployment.chat.StreamChatCompletion(
                pb.StreamChatCompletionRequest(params=params("sim-large", f"prompt {i} words"))
            )
        )
        assert events[-1].HasField("end")
        return "".join(e.delta.content for e in events if e.HasField("delta"))

    texts = await asyncio.gather(*(one(i) for i in range(50)))
    assert len(texts) == 50 and all(texts)
    assert deployment.engines["sim-large"].started == 50


async def test_list_models_names_models_and_aliases(deployment: Deployment) -> None:
    listed = await deployment.models.ListModels(pb.ListModelsRequest())
    assert [(m.id, list(m.aliases)) for m in listed.models] == [
        ("sim-small", ["small"]),
        ("sim-large", ["large"]),
    ]


async def test_health_service_reports_serving(deployment: Deployment) -> None:
    health = health_pb2_grpc.HealthStub(deployment.channel)
    for service in ("", "llmgw.v1.ChatService", "llmgw.v1.ModelService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stream_interval_merges_deltas_without_holding_the_first_token() -> None:
    from backends.engines.sim import SimEngine
    from backends.server import start_sidecar
    from llmgw.backend.v1 import backend_pb2 as bpb
    from llmgw.backend.v1 import backend_pb2_grpc as bpb_grpc

    request = bpb.GenerateRequest(
        request_id="r",
        model="m",
        messages=[bpb.Message(role=bpb.ROLE_USER, content="a b c")],
        sampling=bpb.SamplingParams(max_tokens=20),
    )
    counts = {}
    for interval in (0.0, 0.05):
        sidecar = await start_sidecar(
            SimEngine(SimConfig(itl_ms=5, output_tokens=20)), stream_interval_s=interval
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
                events = [e async for e in bpb_grpc.BackendServiceStub(channel).Generate(request)]
        finally:
            await sidecar.stop(0)
        deltas = [e.delta for e in events if e.HasField("delta")]
        assert sum(d.token_count for d in deltas) == 20 and events[-1].HasField("finished")
        assert deltas[0].token_count == 1  # the first token goes out alone, at once
        counts[interval] = len(deltas)
    assert counts[0.0] >= 15  # 5 ms apart: sent one by one
    assert counts[0.05] <= 6  # ~100 ms of tokens in 50 ms windows
