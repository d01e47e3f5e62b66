"""The chat service on its seams: a scripted fake backend (gateway.testing) and a
fake clock. Retries, breakers, fallbacks, queue timeouts, drain and usage
accounting in milliseconds, with no network and no sleeping."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from contextlib import aclosing

import pytest

from common.batching import StreamLimits, StreamStalled
from gateway.domain.accounting import Grant, Spent, Status, spent_by_choices
from gateway.domain.chat import ChatRequest, FanOut, Finished, Message, Role, Routed
from gateway.domain.observer import NullObserver, RequestRecord, merge_records
from gateway.domain.resilience import ResiliencePolicy
from gateway.domain.service import ChatCompletionService, Completion, Output
from gateway.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ShuttingDown,
    Violation,
)
from gateway.limits.limiter import Reservation
from gateway.limits.ports import BucketView, Decision, TenantLimits
from gateway.routing.breaker import BreakerPolicy, BreakerState
from gateway.routing.registry import ModelRoute
from gateway.routing.retry_budget import RetryPolicy
from gateway.tenancy.directory import Principal
from gateway.testing import (
    Fail,
    FakeClock,
    Finish,
    Gate,
    Hang,
    ScriptedBackend,
    Text,
    routes,
)
from tests.conftest import wait_until

NO_BACKOFF = RetryPolicy(
    max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0, budget_min_per_s=100
)


def request(model: str = "m", text: str = "hi") -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(Role.USER, text),))


def service(
    backend: ScriptedBackend,
    pools: dict[str, list[str]],
    clock: FakeClock,
    policy: ResiliencePolicy | None = None,
    **kw: object,
) -> ChatCompletionService:
    return ChatCompletionService(
        routes(pools, clock, **kw),  # type: ignore[arg-type]
        backend,
        policy or ResiliencePolicy(retry=NO_BACKOFF),
        clock=clock,
        monotonic=clock,
        rng=random.Random(7),
    )


async def run(svc: ChatCompletionService, completion: Completion) -> list[Output]:
    return [e async for e in svc.stream(completion)]


async def test_a_failure_before_the_first_token_is_retried_on_other_endpoints() -> None:
    clock = FakeClock()
    backend = ScriptedBackend()
    for address in "abc":
        backend.script(address, [Fail(BackendUnavailable("down"))])  # each fails once
    svc = service(backend, {"m": ["a", "b", "c"]}, clock)
    with pytest.raises(BackendUnavailable):  # three attempts, each on another endpoint
        await run(svc, await svc.admit(request()))
    assert sorted(c.address for c in backend.calls) == ["a", "b", "c"]
    events = await run(svc, await svc.admit(request()))  # the endpoints work again
    assert len(backend.calls) == 4 and isinstance(events[0], Routed)
    assert "".join(e for e in events if type(e) is str) == "hello world"


async def test_after_the_first_token_a_failure_is_an_error_not_a_retry() -> None:
    clock = FakeClock()
    backend = ScriptedBackend(default=[Text("a"), Fail(BackendFailed("boom"))])
    svc = service(backend, {"m": ["a", "b"]}, clock)
    seen: list[Output] = []
    with pytest.raises(BackendFailed):
        async for event in svc.stream(await svc.admit(request())):
            seen.append(event)
    assert len(backend.calls) == 1 and seen[1] == "a"


async def test_a_silent_backend_times_out_and_the_attempt_moves_on() -> None:
    clock = FakeClock()
    backend = ScriptedBackend().script("a", [Hang()]).script("b", [Hang()])
    policy = ResiliencePolicy(ttft_timeout_s=0.01, retry=NO_BACKOFF)
    svc = service(backend, {"m": ["a", "b"]}, clock, policy)
    with pytest.raises(BackendTimeout):  # both attempts time out, one per endpoint
        await run(svc, await svc.admit(request()))
    assert sorted(c.address for c in backend.calls) == ["a", "b"]
    assert backend.open == 0 and backend.closed == 2  # each silent call was cancelled
    events = await run(svc, await svc.admit(request()))
    assert isinstance(events[-1], Finished)


async def test_the_breaker_opens_then_half_opens_after_the_cooldown_on_the_fake_clock() -> None:
    clock = FakeClock()
    down = [Fail(BackendUnavailable("down"))]
    backend = ScriptedBackend().script("a", down, down, down)
    breaker = BreakerPolicy(consecutive_failures=3, cooldown_s=5.0, half_open_probes=1)
    svc = service(backend, {"m": ["a", "b"]}, clock, breaker=breaker)
    pool = svc.registry.resolve("m").pool
    a = pool.endpoints[0]
    while backend.calls_to("a") < 3:
        await run(svc, await svc.admit(request()))  # each one served by b in the end
    assert a.breaker.state is BreakerState.OPEN
    for _ in range(10):
        await run(svc, await svc.admit(request()))
    assert backend.calls_to("a") == 3  # open: no traffic
    clock.advance(5.01)  # the cooldown passes without waiting for it
    for _ in range(200):  # the policy picks at random: until a probe goes to a
        await run(svc, await svc.admit(request()))
        if backend.calls_to("a") > 3:
            break
    assert backend.calls_to("a") > 3 and a.breaker.state is BreakerState.CLOSED


async def test_a_pool_that_cannot_serve_falls_back_to_the_next_model() -> None:
    clock = FakeClock()
    backend = ScriptedBackend(default=[Fail(BackendUnavailable("down"))])
    backend.script("s", [Text("small"), Finish()])
    svc = service(backend, {"big": ["x", "y"], "small": ["s"]}, clock, fallbacks={"big": ["small"]})
    events = await run(svc, await svc.admit(request("big")))
    assert events[0] == Routed("small", "s") and events[1] == "small"


async def test_a_full_pool_refuses_after_the_queue_timeout() -> None:
    clock = FakeClock()
    hold = asyncio.Event()
    backend = ScriptedBackend().script("a", [Text("x"), Gate(hold), Finish()])
    policy = ResiliencePolicy(queue_timeout_s=0.0, retry=NO_BACKOFF)
    svc = service(backend, {"m": ["a"]}, clock, policy, max_inflight=1)
    first = svc.stream(await svc.admit(request()))
    assert isinstance(await anext(first), Routed)  # holds the only slot
    with pytest.raises(BackendUnavailable) as refused:
        await run(svc, await svc.admit(request()))
    assert "waited too long in the queue" in refused.value.message
    hold.set()
    assert isinstance([e async for e in first][-1], Finished)


async def test_an_invalid_request_is_not_retried_and_gives_no_breaker_verdict() -> None:
    clock = FakeClock()
    invalid = InvalidRequest([Violation("messages", "too long")])
    backend = ScriptedBackend(default=[Fail(invalid)])
    svc = service(backend, {"m": ["a", "b"]}, clock)
    with pytest.raises(InvalidRequest):
        await run(svc, await svc.admit(request()))
    assert len(backend.calls) == 1
    assert all(
        e.breaker.state is BreakerState.CLOSED for e in svc.registry.resolve("m").pool.endpoints
    )


class Accounting:
    """An AdmissionPort that admits everyone and records what is settled."""

    def __init__(self) -> None:
        self.admitted: list[ChatRequest | FanOut] = []
        self.settled: list[Spent] = []

    async def admit(
        self, caller: Principal | None, route: ModelRoute, request: ChatRequest | FanOut
    ) -> Grant:
        self.admitted.append(request)
        view = BucketView(10, 9, 1.0)
        decision = Decision(True, (), None, view, view)
        limits = TenantLimits(10, 10, 1)
        reservation = Reservation("rsv", "t", limits, 5, "202612", decision)
        return Grant("t", "k", 1, None, reservation, prompt_estimate=7)

    def settle(self, grant: Grant, spent: Spent) -> None:
        self.settled.append(spent)

    def may_list(self, caller: Principal | None) -> object:
        return lambda name: True


def accounted(
    backend: ScriptedBackend, clock: FakeClock, observer: NullObserver | None = None
) -> tuple[ChatCompletionService, Accounting]:
    port = Accounting()
    svc = ChatCompletionService(
        routes({"m": ["a"]}, clock), backend, ResiliencePolicy(retry=NO_BACKOFF),
        clock=clock, monotonic=clock, admission=port, observer=observer,  # type: ignore[arg-type]
    )  # fmt: skip
    return svc, port


class Recorder(NullObserver):
    """Records what the service reports, event by event."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.records: list[RequestRecord] = []

    def started(self, model: str) -> None:
        self.events.append("started")

    def first_token(self, model: str, ttft_s: float, overhead_s: float) -> None:
        self.events.append("first_token")

    def delta(self, model: str, gap_s: float, tokens: int) -> None:
        self.events.append("delta")

    def finished(self, record: RequestRecord) -> None:
        self.events.append("finished")
        self.records.append(record)


def observed(backend: ScriptedBackend, clock: FakeClock) -> tuple[ChatCompletionService, Recorder]:
    observer = Recorder()
    svc, _ = accounted(backend, clock, observer)
    return svc, observer


async def test_a_cancelled_stream_settles_the_tokens_its_consumer_took() -> None:
    clock = FakeClock()
    hold = asyncio.Event()
    script: Sequence = [Text("one", 2), Text(" two", 3), Gate(hold), Text(" three", 4), Finish()]
    svc, port = accounted(ScriptedBackend(default=script), clock)
    async with aclosing(svc.stream(await svc.admit(request()))) as events:
        taken = [await anext(events) for _ in range(3)]  # Routed, "one", " two"
    assert taken[1:] == ["one", " two"]
    (spent,) = port.settled
    # " two" counts once the consumer came back for more; the gated text never went out.
    assert spent.status is Status.CANCELLED and spent.completion_tokens == 2
    assert not spent.exact and spent.prompt_tokens > 0


async def test_a_finished_stream_settles_the_backends_exact_usage() -> None:
    clock = FakeClock()
    svc, port = accounted(ScriptedBackend(default=[Text("x", 4), Finish(prompt_tokens=9)]), clock)
    await run(svc, await svc.admit(request()))
    (spent,) = port.settled
    assert (spent.status, spent.prompt_tokens, spent.completion_tokens, spent.exact) == (
        Status.OK, 9, 4, True,
    )  # fmt: skip


async def test_drain_ends_a_waiting_stream_with_shutting_down_and_settles_it() -> None:
    clock = FakeClock()
    hold = asyncio.Event()
    svc, port = accounted(ScriptedBackend(default=[Text("a", 1), Gate(hold), Finish()]), clock)
    consumer_saw: list[Output] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for event in svc.stream(await svc.admit(request())):
            consumer_saw.append(event)
            if len(consumer_saw) == 2:
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    assert svc.in_flight == 1
    assert await svc.drain(0) == 1  # grace over at once: the stream waiting on the backend ends
    with pytest.raises(ShuttingDown):
        await task
    assert await svc.wait_idle(1) and svc.in_flight == 0
    (spent,) = port.settled
    assert spent.status is Status.ERROR and spent.completion_tokens == 1
    with pytest.raises(ShuttingDown):  # and nothing new is admitted
        await svc.admit(request())


def fanout(prompts: Sequence[str], n: int) -> FanOut:
    return FanOut(
        [ChatRequest(model="m", messages=(), prompt=p) for p in prompts for _ in range(n)], n
    )


async def test_a_fanout_is_admitted_once_and_settled_once_with_every_choices_usage() -> None:
    clock = FakeClock()
    backend = ScriptedBackend(default=[Text("x", 4), Finish(prompt_tokens=9)])
    svc, port = accounted(backend, clock)
    request = fanout(["one", "two"], n=2)
    choices = await svc.admit_all(request)
    assert port.admitted == [request] and len(choices.completions) == 4
    assert len({c.id for c in choices.completions}) == 4  # a generation id each
    events = [e async for e in svc.stream_all(choices)]
    assert sorted(i for i, e in events if type(e) is Finished) == [0, 1, 2, 3]
    (spent,) = port.settled
    # Every choice's output; each prompt's tokens once (as OpenAI counts them).
    assert (spent.request_id, spent.status, spent.exact) == (
        choices.completions[0].id,
        Status.OK,
        True,
    )
    assert (spent.prompt_tokens, spent.completion_tokens, spent.backend) == (2 * 9, 4 * 4, "a")
    assert svc.in_flight == 0


async def test_a_cancelled_fanout_settles_once_after_every_choice_has_ended() -> None:
    clock = FakeClock()
    hold = asyncio.Event()
    backend = ScriptedBackend(default=[Text("a", 2), Gate(hold), Text("b", 3), Finish()])
    svc, port = accounted(backend, clock)
    choices = await svc.admit_all(fanout(["one"], n=3))
    async with aclosing(svc.stream_all(choices)) as events:
        texts = 0
        async for _, event in events:
            texts += event == "a"
            if texts == 3:  # every choice is waiting at the gate
                break
        assert backend.open == 3 and not port.settled
    (spent,) = port.settled  # once, when the last choice had ended
    assert backend.open == 0 and backend.closed == 3
    assert (spent.status, spent.exact, spent.backend) == (Status.CANCELLED, False, "a")
    assert spent.completion_tokens == 3 * 2 and spent.prompt_tokens > 0
    assert svc.in_flight == 0


async def test_a_failed_choice_fails_the_fanout_and_it_settles_once() -> None:
    clock = FakeClock()
    backend = ScriptedBackend(default=[Text("a"), Finish()])
    hold = asyncio.Event()
    backend.script("a", [Text("x"), Gate(hold), Finish()], [Text("y"), Fail(BackendFailed("boom"))])
    observer = Recorder()
    svc, port = accounted(backend, clock, observer)
    with pytest.raises(BackendFailed):
        [e async for e in svc.stream_all(await svc.admit_all(fanout(["one"], n=3)))]
    (spent,) = port.settled
    assert spent.status is Status.ERROR and backend.open == 0
    # Reported once too, as that failure.
    assert [r.outcome for r in observer.records] == ["backend_failed"]
    assert observer.events.count("started") == 1


async def test_a_fanout_is_reported_as_one_request_with_every_choices_tokens() -> None:
    clock = FakeClock()
    backend = ScriptedBackend(default=[Text("x", 4), Text("y", 1), Finish(prompt_tokens=9)])
    svc, observer = observed(backend, clock)
    choices = await svc.admit_all(fanout(["one", "two"], n=2))
    [e async for e in svc.stream_all(choices)]
    # One request for the request counters, the in-flight gauge, TTFT and the access
    # log; each choice's token gaps still count (inter-token latency is per stream).
    assert observer.events.count("started") == 1 and observer.events.count("first_token") == 1
    assert observer.events.count("delta") == 4 * 2  # after each choice's first batch
    assert observer.events[-1] == "finished"
    (record,) = observer.records
    assert (record.request_id, record.outcome, record.backend) == (
        choices.completions[0].id, "ok", "a",
    )  # fmt: skip
    assert (record.prompt_tokens, record.completion_tokens) == (2 * 9, 4 * 5)


async def test_a_cancelled_fanout_is_reported_once_as_cancelled() -> None:
    clock = FakeClock()
    hold = asyncio.Event()
    backend = ScriptedBackend(default=[Text("a", 2), Gate(hold), Finish()])
    svc, observer = observed(backend, clock)
    async with aclosing(svc.stream_all(await svc.admit_all(fanout(["one"], n=2)))) as events:
        async for _, event in events:
            if event == "a":
                break  # the client leaves after one choice's first text
    (record,) = observer.records
    assert record.outcome == "cancelled" and record.completion_tokens >= 2


def record(outcome: str, prompt: int = 5, output: int = 3, backend: str = "a") -> RequestRecord:
    return RequestRecord("id", "m", "m", backend, "t", outcome, 0.1, prompt, output, 1.0)


@pytest.mark.parametrize(
    ("records", "outcome"),
    [
        ([record("ok"), record("ok")], "ok"),
        ([record("ok"), None], "cancelled"),  # a choice that never started
        ([record("cancelled"), record("client_stalled")], "client_stalled"),
        ([record("client_stalled"), record("backend_timeout"), record("boom")], "backend_timeout"),
    ],
)
def test_a_fanouts_record_has_its_worst_choices_outcome(
    records: list[RequestRecord | None], outcome: str
) -> None:
    assert merge_records("req", records, 1, 2.0).outcome == outcome


def test_a_fanouts_record_counts_each_prompt_once_preferring_a_finished_choice() -> None:
    records = [record("cancelled", prompt=6), record("ok", prompt=9), None, record("ok", prompt=4)]
    merged = merge_records("req", records, 2, 2.0)
    assert (merged.request_id, merged.prompt_tokens, merged.completion_tokens) == ("req", 13, 9)
    assert merged.duration_s == 2.0


async def test_a_drain_waits_for_the_fanout_to_settle() -> None:
    clock = FakeClock()
    hold = asyncio.Event()
    backend = ScriptedBackend(default=[Text("a", 1), Gate(hold), Finish()])
    svc, port = accounted(backend, clock)
    choices = await svc.admit_all(fanout(["one", "two"], n=1))

    async def consume() -> None:
        async for _ in svc.stream_all(choices):
            pass

    task = asyncio.create_task(consume())
    await wait_until(lambda: backend.open == 2)
    assert await svc.drain(0) == 2  # each choice is one stream ended
    assert await svc.wait_idle(1)
    (spent,) = port.settled  # idle means settled: shutdown may flush usage now
    assert spent.status is Status.ERROR
    with pytest.raises(ShuttingDown):
        await task


def choice(status: Status, backend: str = "a", prompt: int = 5, exact: bool = False) -> Spent:
    return Spent("c", status, "m", backend, prompt, 2, exact, 1.0, 1.0, None)


@pytest.mark.parametrize(
    ("choices", "status"),
    [
        ([choice(Status.OK, exact=True)] * 2, Status.OK),
        ([choice(Status.OK), choice(Status.CANCELLED)], Status.CANCELLED),
        ([choice(Status.OK), None], Status.CANCELLED),  # one never started
        ([choice(Status.ERROR), choice(Status.CANCELLED)], Status.ERROR),
        ([choice(Status.REJECTED, ""), choice(Status.CANCELLED, "")], Status.REJECTED),
        ([choice(Status.REJECTED, ""), choice(Status.CANCELLED)], Status.ERROR),  # one served
        ([None, None], Status.CANCELLED),
    ],
)
def test_a_fanout_ends_as_its_worst_choice(choices: list[Spent | None], status: Status) -> None:
    total = spent_by_choices("id", "m", choices, 1, 0.0, 1.0)
    assert total.status is status and total.request_id == "id"
    assert total.exact == (status is Status.OK)


def test_each_prompt_counts_once_preferring_the_backends_count() -> None:
    parts = [
        choice(Status.OK, prompt=7, exact=True),
        choice(Status.CANCELLED, prompt=9),
        None,
        None,
    ]
    total = spent_by_choices("id", "m", parts, 2, 0.0, 1.0)  # two prompts, n=2
    assert (total.prompt_tokens, total.completion_tokens) == (7, 4)


async def test_a_cancel_during_the_retry_backoff_frees_the_reserved_endpoint() -> None:
    # The retry reserves its endpoint (a slot, and a probe while half-open)
    # before sleeping the backoff: a client gone during the sleep must free both.
    clock = FakeClock()
    backend = ScriptedBackend(default=[Hang()])
    for address in "ab":  # whichever is tried first fails; the other is reserved
        backend.script(address, [Fail(BackendUnavailable("down"))])
    slow = RetryPolicy(
        max_attempts=3, backoff_base_s=30.0, backoff_max_s=30.0, budget_min_per_s=100
    )
    policy = ResiliencePolicy(retry=slow)
    breaker = BreakerPolicy(consecutive_failures=3, cooldown_s=5.0, half_open_probes=1)
    svc = service(backend, {"m": ["a", "b"]}, clock, policy, breaker=breaker)
    endpoints = svc.registry.resolve("m").pool.endpoints
    for endpoint in endpoints:  # both half-open: each call takes their only probe
        endpoint.breaker.trip()
    clock.advance(5.01)
    task = asyncio.create_task(run(svc, await svc.admit(request())))
    await wait_until(lambda: len(backend.calls) == 1 and sum(e.outstanding for e in endpoints) == 1)
    (waiting,) = [e for e in endpoints if e.outstanding]  # reserved, in the backoff
    assert waiting.address != backend.calls[0].address
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.outstanding for e in endpoints] == [0, 0]
    assert waiting.breaker.would_allow()  # its probe is free for the next request
    assert len(backend.calls) == 1


class Outcomes(NullObserver):
    """Records each finished request's outcome."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def finished(self, record: RequestRecord) -> None:
        self.outcomes.append(record.outcome)


async def test_a_client_that_stops_reading_is_recorded_as_stalled_not_as_an_internal_error() -> (
    None
):
    clock = FakeClock()
    backend = ScriptedBackend(default=[Text("x" * 10) for _ in range(20)] + [Finish()])
    port, observer, stalls = Accounting(), Outcomes(), []
    svc = ChatCompletionService(
        routes({"m": ["a"]}, clock), backend, ResiliencePolicy(retry=NO_BACKOFF),
        clock=clock, monotonic=clock, admission=port, observer=observer,  # type: ignore[arg-type]
        limits=StreamLimits(max_buffered=20, max_batch=10, stall_timeout_s=0.01),
    )  # fmt: skip
    async with aclosing(svc.stream(await svc.admit(request()), lambda: stalls.append(1))) as events:
        assert isinstance(await anext(events), Routed)
        await wait_until(lambda: stalls == [1])  # the consumer took nothing: stalled
        with pytest.raises(StreamStalled):  # what was buffered, then the stall
            async for _ in events:
                pass
    assert observer.outcomes == ["client_stalled"]
    (spent,) = port.settled
    assert spent.status is Status.CANCELLED and backend.open == 0
