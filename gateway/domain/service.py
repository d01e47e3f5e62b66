"""The completion use case, shared by chat, raw-prompt completions and
embeddings: validate, resolve the model, admit the caller (permissions,
limits: the admission port), route to an endpoint (queueing fairly when the
pool is full), retry on another endpoint or fall back to another model while
nothing has reached the client, then stream and settle what was used. A
completions call with several choices is several generations under one
admission, settled once (``admit_all``, ``stream_all``). A stream either
ends with a Finished event or raises: never a silent truncation. No
transport code here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import cast

from opentelemetry import trace

from common.batching import Pace, StreamLimits, batched
from gateway.domain.accounting import (
    Grant,
    Spent,
    Status,
    estimate_request_prompt,
    estimate_tokens,
    spent_by_choices,
)
from gateway.domain.assemble import AssembledChoice, ChoiceAssembler
from gateway.domain.chat import (
    ChatRequest,
    ChoiceDelta,
    Delta,
    FanOut,
    Finished,
    Generation,
    Routed,
    StreamEvent,
)
from gateway.domain.embedding import EmbeddingJob, EmbeddingRequest
from gateway.domain.fanout import merged
from gateway.domain.observer import (
    CompletionObserver,
    FanOutObserver,
    NullObserver,
    RequestRecord,
)
from gateway.domain.ports import AdmissionPort, BackendPort
from gateway.domain.resilience import ResiliencePolicy
from gateway.domain.routing_key import request_key
from gateway.domain.validation import (
    bind,
    bind_embedding,
    check_embedding_shape,
    check_kind,
    check_request_shape,
    resolve_max_tokens,
)
from gateway.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    ClientStalled,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    ShuttingDown,
)
from gateway.routing.endpoint import Endpoint
from gateway.routing.pool import PoolSaturated, PoolUnavailable
from gateway.routing.registry import ModelKind, ModelRegistry, ModelRoute
from gateway.routing.retry_budget import RetryBudget
from gateway.tenancy.directory import Principal

# OpenTelemetry's API (no SDK, no transport): a no-op unless tracing is configured.
_TRACER = trace.get_tracer("llmgw.gateway")

# Errors worth another endpoint when no token has reached the client yet.
_RETRYABLE = (BackendUnavailable, BackendTimeout, BackendFailed)

# What a service yields to its transport: which model served, text, then Finished.
Output = Routed | str | ChoiceDelta | Finished


def _shutting_down() -> ShuttingDown:
    return ShuttingDown(
        "The gateway is shutting down; the stream was ended before it finished. Please retry.",
        retry_after_s=1.0,
    )


def new_completion_id() -> str:
    """An OpenAI-style completion id (also used as the request id downstream)."""
    return "chatcmpl-" + secrets.token_hex(12)


# Id prefixes as OpenAI writes them: chat "chatcmpl-", completions "cmpl-"; embeddings
# have no id in OpenAI's answer, ours is only the request id (logs, x-request-id).
_CHAT_PREFIX = "chatcmpl-"
_PROMPT_PREFIX = "cmpl-"
_EMBEDDING_PREFIX = "embd-"

Work = Generation | EmbeddingJob
"""What a backend is asked to do: generate text, or embed inputs."""


@dataclass(frozen=True, slots=True)
class Completion:
    """An admitted request: its id, the model asked for and what to generate."""

    id: str
    model: str
    created: int
    route: ModelRoute
    generation: Work
    request: ChatRequest | EmbeddingRequest
    tenant: str = ""
    priority: int = 0
    allowed: frozenset[str] | None = None  # models the caller may use; None: all
    grant: Grant | None = None  # what admission reserved; settled when the stream ends
    client_request_id: str = ""  # the caller's x-request-id, for logs


@dataclass(frozen=True, slots=True)
class Choices:
    """An admitted fan-out: one Completion per choice (its own generation and
    id; choice ``i`` continues prompt ``i // n``), all under one grant, which
    ``stream_all`` settles once. The client sees the first choice's id."""

    completions: Sequence[Completion]
    n: int


@dataclass(frozen=True, slots=True)
class CompletedText:
    """A whole (non-streamed) completion."""

    completion: Completion
    routed: Routed
    text: str
    finished: Finished
    choices: list[AssembledChoice]


def _weight(event: StreamEvent) -> int:
    """An event's share of the stream's buffer and batch limits: its characters."""
    return len(event[0]) + 1 if type(event) is tuple else 1


class _Live:
    """One stream in progress, as a drain sees it: a flag, and the wait (for a
    backend, a queue slot) that a drain interrupts. Per token the stream only
    stores and clears ``wait`` and tests ``cut``."""

    __slots__ = ("cut", "wait")

    def __init__(self, cut: bool = False) -> None:
        self.cut = cut
        self.wait: asyncio.Timeout | None = None

    def interrupt(self) -> None:
        """End the stream at its next wait or message (ShuttingDown)."""
        self.cut = True
        wait = self.wait
        if wait is not None:
            # Fires at once; if the wait is already over the stream sees ``cut`` next.
            with contextlib.suppress(RuntimeError):
                wait.reschedule(asyncio.get_running_loop().time())


class _FailedBeforeFirstToken(Exception):
    """An attempt failed while nothing had been sent to the client."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class ChatCompletionService:
    """Admits chat requests and streams their completions from the backends."""

    def __init__(
        self,
        registry: ModelRegistry,
        backends: BackendPort,
        policy: ResiliencePolicy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = new_completion_id,
        rng: random.Random | None = None,
        observer: CompletionObserver | None = None,
        pace: Pace | None = None,
        limits: StreamLimits | None = None,
        admission: AdmissionPort | None = None,
    ) -> None:
        self._registry = registry
        self._admission = admission
        # Drain: streams in progress, admissions in progress, and whether new ones are refused.
        self._live: set[_Live] = set()
        self._admitting = 0
        self._fanouts = 0
        self._closing = False
        self._cut_all = False
        self._idle: asyncio.Event | None = None
        # Bounded per-stream buffer and batch size, and the hold that merges
        # tokens while this process falls behind (common.batching, common.pace).
        self._pace = pace
        self._limits = limits or StreamLimits()
        self._observer: CompletionObserver = observer or NullObserver()
        self._monotonic = monotonic
        self._backends = backends
        self._policy = policy or ResiliencePolicy()
        self._clock = clock
        self._new_id = new_id
        self._rng = rng or random.Random()
        self._budget = RetryBudget(self._policy.retry, monotonic)

    @property
    def registry(self) -> ModelRegistry:
        """The models served."""
        return self._registry

    def models_for(self, caller: Principal | None) -> list[ModelRoute]:
        """The models ``caller`` may see listed."""
        routes = self._registry.routes
        if self._admission is None:
            return list(routes)
        visible = self._admission.may_list(caller)
        return [r for r in routes if visible(r.name)]

    def model_for(self, name: str, caller: Principal | None) -> ModelRoute:
        """The model ``name`` (or alias) names, if ``caller`` may see it; ModelNotFound
        otherwise, so that a model outside the caller's list is not revealed."""
        route = self._registry.resolve(name)
        if self._admission is not None and not self._admission.may_list(caller)(route.name):
            raise ModelNotFound(name)
        return route

    async def admit(
        self, request: ChatRequest | EmbeddingRequest, caller: Principal | None = None
    ) -> Completion:
        """Validate, resolve the model and admit ``caller`` (permissions, limits);
        raise GatewayError if the request cannot be served.

        A chat or raw-prompt request needs a generating model, an embedding
        request an embedding model (InvalidRequest on ``model`` otherwise).
        The returned completion holds a reservation when admission is on:
        ``stream`` (or ``complete``) settles it, so call one of them next.
        """
        self._check_open()
        completion = self._bind(request)
        return _granted(completion, await self._grant(caller, completion.route, request))

    async def admit_all(self, fanout: FanOut, caller: Principal | None = None) -> Choices:
        """Validate every choice of ``fanout`` (one model) and admit them as one
        request: one grant (one request of the rate limit, one concurrency slot,
        tokens for every choice) shared by all. ``stream_all`` settles it, so
        call it next."""
        self._check_open()
        bound = [self._bind(request) for request in fanout.requests]
        grant = await self._grant(caller, bound[0].route, fanout)
        return Choices([_granted(c, grant) for c in bound], fanout.n)

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown("The gateway is shutting down. Please retry.", retry_after_s=1.0)

    def _bind(self, request: ChatRequest | EmbeddingRequest) -> Completion:
        """Validate ``request``, resolve its model and bind it: a completion not yet admitted."""
        generation: Work
        unique = self._new_id().removeprefix(_CHAT_PREFIX)
        if isinstance(request, EmbeddingRequest):
            check_embedding_shape(request)
            route = self._registry.resolve(request.model)
            check_kind(route, ModelKind.EMBEDDING)
            completion_id = _EMBEDDING_PREFIX + unique
            generation = bind_embedding(request, completion_id, route.engine_model)
        else:
            check_request_shape(request)
            route = self._registry.resolve(request.model)
            check_kind(route, ModelKind.CHAT)
            max_tokens = resolve_max_tokens(request, route.limits)
            prefix = _CHAT_PREFIX if request.prompt is None else _PROMPT_PREFIX
            completion_id = prefix + unique
            generation = bind(request, completion_id, route.engine_model, max_tokens)
        return Completion(
            id=completion_id,
            model=route.name,
            created=int(self._clock()),
            route=route,
            generation=generation,
            request=request,
        )

    async def _grant(
        self,
        caller: Principal | None,
        route: ModelRoute,
        request: ChatRequest | EmbeddingRequest | FanOut,
    ) -> Grant | None:
        """Ask the admission port (when there is one); counted in flight meanwhile."""
        if self._admission is None:
            return None
        self._admitting += 1
        try:
            return await self._admission.admit(caller, route, request)
        finally:
            self._admitting -= 1
            self._notify_idle()

    def _settle(self, grant: Grant | None, spent: Spent) -> None:
        if grant is not None and self._admission is not None:
            self._admission.settle(grant, spent)

    @property
    def in_flight(self) -> int:
        """Streams (and admissions, and fan-outs not yet settled) in progress."""
        return len(self._live) + self._admitting + self._fanouts

    def close_admissions(self) -> None:
        """Refuse new requests from now on (ShuttingDown: UNAVAILABLE, retry elsewhere)."""
        self._closing = True

    async def drain(self, grace_s: float | None) -> int:
        """Refuse new requests, let those in progress finish for up to ``grace_s``
        seconds (None: however long), then end the rest with ShuttingDown at
        their next wait or message. Returns how many were ended. Each ended
        stream settles what it sent; ``wait_idle`` waits for that."""
        self._closing = True
        await self.wait_idle(grace_s)
        self._cut_all = True
        cut = list(self._live)
        for live in cut:
            live.interrupt()
        return len(cut)

    async def wait_idle(self, timeout_s: float | None) -> bool:
        """Wait until no stream or admission is in progress; False on timeout."""
        if not self.in_flight:
            return True
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return not self.in_flight
        return True

    def _notify_idle(self) -> None:
        if self._idle is not None and not self.in_flight:
            self._idle.set()

    def stream(
        self, completion: Completion, on_stall: Callable[[], None] | None = None
    ) -> AsyncGenerator[Output, None]:
        """Yield one Routed, then text deltas, then exactly one Finished
        (see _route_and_stream). However it ends, report the request to the
        observer and settle its grant with what was used: the backend's exact
        usage when it finished, else the tokens the consumer took (a text
        counts once the consumer comes back for the next event, i.e. once the
        transport has written it) and the prompt estimate.

        ``on_stall`` is called when the consumer took nothing for the stall
        timeout while the stream's buffer was full (a client that stopped
        reading): the backend call is already closed then, and the transport
        ends the call with an error.
        """
        return self._stream(completion, on_stall, partial(self._settle, completion.grant))

    async def stream_all(
        self, choices: Choices, on_stall: Callable[[], None] | None = None
    ) -> AsyncGenerator[tuple[int, Output], None]:
        """Stream every choice of a fan-out, merged: ``(choice index, event)`` as
        events arrive, each choice's as ``stream`` yields them. The first choice
        to fail ends the others and its error is raised. However it ends, the
        shared grant is settled once, when every choice has ended, with what
        they used together (``spent_by_choices``)."""
        began, started_at = self._monotonic(), self._clock()
        spent: list[Spent | None] = [None] * len(choices.completions)
        # Metrics and the access log count the call once too.
        observer = FanOutObserver(self._observer, len(choices.completions), choices.n)
        self._fanouts += 1  # in flight until settled: a drain waits for the settlement
        try:
            streams = [
                self._stream(c, on_stall, _into(spent, i), observer.for_choice(i))
                for i, c in enumerate(choices.completions)
            ]
            async with aclosing(merged(streams)) as events:
                async for item in events:
                    yield item
        finally:
            # Every choice has ended here: merged() closed and awaited them all.
            first = choices.completions[0]
            duration = self._monotonic() - began
            observer.close(first.id, duration)
            total = spent_by_choices(first.id, first.model, spent, choices.n, started_at, duration)
            self._settle(first.grant, total)
            self._fanouts -= 1
            self._notify_idle()

    async def _stream(
        self,
        completion: Completion,
        on_stall: Callable[[], None] | None,
        settle: Callable[[Spent], None],
        observer: CompletionObserver | None = None,
    ) -> AsyncGenerator[Output, None]:
        """``stream``, handing what was used to ``settle`` (exactly once) and
        reporting to ``observer`` (the service's when None)."""
        if observer is None:
            observer = self._observer
        began = self._monotonic()
        started_at = self._clock()
        observer.started(completion.model)
        outcome, status = "cancelled", Status.CANCELLED
        usage: Finished | None = None
        sent_chars = sent_tokens = 0
        routed: Routed | None = None
        ttft: float | None = None
        live = _Live(self._cut_all)
        self._live.add(live)
        stalled = False

        def stall() -> None:
            nonlocal stalled
            stalled = True
            if on_stall is not None:
                on_stall()

        try:
            events = self._route_and_stream(completion, began, observer, stall, live)
            async with aclosing(events):
                async for event in events:
                    if type(event) is tuple:
                        text, tokens = event
                        yield text
                        sent_chars += len(text)
                        sent_tokens += tokens
                        if live.cut:
                            raise _shutting_down()
                        continue
                    if type(event) is Finished:
                        outcome, status, usage = "ok", Status.OK, event
                    elif type(event) is Routed:
                        routed, ttft = event, self._monotonic() - began
                    elif type(event) is ChoiceDelta:
                        yield event
                        sent_chars += _chars(event)
                        sent_tokens += event.tokens
                        if live.cut:
                            raise _shutting_down()
                        continue
                    yield event  # type: ignore[misc]  # a Delta went above
        except GatewayError as error:
            outcome = error.reason
            # Refused as invalid (by the engine, say) before anything was served.
            rejected = isinstance(error, InvalidRequest) and routed is None
            status = Status.REJECTED if rejected else Status.ERROR
            raise
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException:
            outcome, status = "internal_error", Status.ERROR
            raise
        finally:
            if stalled:
                # The client stopped reading and was cut off (its StreamStalled, or the
                # cancel that ends the call): its doing, like a disconnect, not our fault.
                outcome, status = ClientStalled.reason, Status.CANCELLED
            if usage is not None:
                prompt_tokens = usage.usage.prompt_tokens
                completion_tokens = usage.usage.completion_tokens
            else:
                prompt_tokens = estimate_request_prompt(completion.request)
                # Engines that send no per-delta counts: estimate from the text.
                completion_tokens = sent_tokens or estimate_tokens(sent_chars)
            duration = self._monotonic() - began
            observer.finished(
                RequestRecord(
                    request_id=completion.id,
                    model=completion.model,
                    served_by=routed.model if routed else "",
                    backend=routed.backend if routed else "",
                    tenant=completion.tenant,
                    outcome=outcome,
                    ttft_s=ttft,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    duration_s=duration,
                    client_request_id=completion.client_request_id,
                )
            )
            settle(
                Spent(
                    request_id=completion.id,
                    status=status,
                    model=routed.model if routed else completion.model,
                    backend=routed.backend if routed else "",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    exact=usage is not None,
                    started_at=started_at,
                    duration_s=duration,
                    ttft_s=ttft,
                )
            )
            self._live.discard(live)
            self._notify_idle()

    async def _route_and_stream(
        self,
        completion: Completion,
        began: float,
        observer: CompletionObserver,
        on_stall: Callable[[], None] | None = None,
        live: _Live | None = None,
    ) -> AsyncGenerator[Routed | StreamEvent, None]:
        """Yield one Routed, then text deltas, then exactly one Finished.

        Before the first token, a failed attempt is retried on another
        endpoint (jittered backoff, within the retry budget), and a model
        whose pool is down, open-circuited or saturated hands over to its
        fallbacks. After the first token nothing is retried: the client has
        seen part of one answer and a second answer cannot be spliced onto
        it, so a failure then raises (the transports turn it into an
        explicit error, never a clean end).
        """
        policy = self._policy
        live = live or _Live()
        self._budget.on_request()
        key = request_key(completion.request)
        attempts = 0
        error: GatewayError = BackendUnavailable("No backend is available for this model.")
        previous: ModelRoute | None = None
        for route in self._registry.chain(completion.route):
            generation = self._generation_for(completion, route)
            if generation is None:
                continue  # cannot serve: the caller may not use it, or its max_tokens
            if previous is not None:
                observer.fell_back(previous.name, route.name)
            previous = route
            tried: set[Endpoint] = set()
            while attempts < policy.retry.max_attempts:
                if live.cut:
                    raise _shutting_down()
                try:
                    # A span per routing decision: queueing shows up in traces.
                    with _TRACER.start_as_current_span("llmgw.route") as span:
                        span.set_attribute("llmgw.model", route.name)
                        span.set_attribute("llmgw.queue_depth", route.pool.queue.depth)
                        async with asyncio.timeout(None) as wait:  # a drain may end it
                            live.wait = wait
                            endpoint = await route.pool.acquire(
                                key=key,
                                tenant=completion.tenant,
                                priority=completion.priority,
                                timeout_s=policy.queue_timeout_s,
                                exclude=tried,
                            )
                        live.wait = None
                        span.set_attribute("llmgw.backend", endpoint.address)
                except TimeoutError:
                    live.wait = None
                    raise _shutting_down() from None
                except PoolUnavailable:
                    if not tried:  # otherwise the last attempt's error says more
                        error = BackendUnavailable(
                            "No backend is available for this model.", retry_after_s=1.0
                        )
                    break  # next model in the chain
                except PoolSaturated:
                    if not tried:
                        error = BackendUnavailable(
                            "The model is overloaded; the request waited too long in the queue.",
                            retry_after_s=max(1.0, policy.queue_timeout_s / 2),
                        )
                    break
                tried.add(endpoint)
                if attempts:
                    if not self._budget.try_retry():
                        route.pool.release(endpoint)
                        endpoint.breaker.release_probe()
                        raise error
                    observer.retried(route.name)
                    try:
                        await asyncio.sleep(self._backoff(attempts))
                        if live.cut:
                            raise _shutting_down()
                    except BaseException:  # a drain, or the client gone during the backoff
                        route.pool.release(endpoint)  # _attempt's finally is not reached
                        endpoint.breaker.release_probe()
                        raise
                attempts += 1
                try:
                    attempt = self._attempt(
                        route, endpoint, generation, began, observer, on_stall, live
                    )
                    async with aclosing(attempt) as events:
                        async for event in events:
                            yield event
                    return
                except _FailedBeforeFirstToken as failed:
                    error = failed.error
        raise error

    def _generation_for(self, completion: Completion, route: ModelRoute) -> Work | None:
        if route is completion.route:
            return completion.generation
        if completion.allowed is not None and route.name not in completion.allowed:
            return None  # the caller may not use this fallback
        request = completion.request
        if isinstance(request, EmbeddingRequest):
            return bind_embedding(request, completion.id, route.engine_model)
        try:
            max_tokens = resolve_max_tokens(request, route.limits)
        except InvalidRequest:
            return None
        return bind(request, completion.id, route.engine_model, max_tokens)

    def _backoff(self, attempt: int) -> float:
        retry = self._policy.retry
        ceiling = min(retry.backoff_max_s, retry.backoff_base_s * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)  # full jitter: retries do not arrive in step

    async def _attempt(
        self,
        route: ModelRoute,
        endpoint: Endpoint,
        generation: Work,
        began: float,
        observer: CompletionObserver,
        on_stall: Callable[[], None] | None,
        live: _Live,
    ) -> AsyncGenerator[Routed | StreamEvent, None]:
        """One backend call. Raises _FailedBeforeFirstToken when it may be retried.

        Each wait for the backend is registered on ``live``, so a drain can end
        it at once; a timeout that fires with ``live.cut`` set is the drain's,
        not the backend's (no verdict on the endpoint, no retry)."""
        policy = self._policy
        breaker = endpoint.breaker
        now, model = self._monotonic, route.name
        verdict = False
        try:
            called = now()
            events = (
                self._backends.generate(endpoint.address, generation)
                if type(generation) is Generation
                else self._backends.embed(endpoint.address, generation)  # type: ignore[arg-type]
            )
            batches = batched(
                events, self._limits, weight=_weight, pace=self._pace, on_stall=on_stall
            )
            async with aclosing(batches):
                error: GatewayError
                try:
                    async with asyncio.timeout(policy.ttft_timeout_s) as wait:
                        live.wait = wait
                        batch = await anext(batches, None)
                except TimeoutError:
                    if live.cut:
                        raise _shutting_down() from None
                    batch = None
                    error = BackendTimeout("The model's backend did not answer in time.")
                except InvalidRequest:
                    raise  # the client's fault: no verdict on the endpoint, no retry
                except GatewayError as caught:
                    batch, error = None, caught
                else:
                    error = BackendFailed("The model's backend ended the stream without answering.")
                finally:
                    live.wait = None
                if batch is None:
                    verdict = True
                    breaker.record_failure()
                    if isinstance(error, _RETRYABLE):
                        raise _FailedBeforeFirstToken(error)
                    raise error
                verdict = True
                breaker.record_success()
                last = now()
                observer.first_token(model, last - began, called - began)
                yield Routed(route.name, endpoint.address)
                first = True
                while batch is not None:
                    if not first:
                        arrived = now()
                        observer.delta(model, arrived - last, len(batch))
                        last = arrived
                    first = False
                    # A batch is deltas, possibly followed by the Finished event.
                    end = batch[-1] if type(batch[-1]) is Finished else None
                    texts = batch[:-1] if end is not None else batch
                    if len(texts) == 1:
                        yield texts[0]
                    elif texts:
                        if all(type(t) is tuple for t in texts):
                            deltas = cast("list[Delta]", texts)
                            yield "".join([t for t, _ in deltas]), sum([n for _, n in deltas])
                        else:  # rich events among them: keep each, in order
                            for item in _merge_text(texts):
                                yield item
                    if end is not None:
                        yield end
                        return
                    try:
                        # The timeout wraps only the wait for the backend, never our
                        # yields: it must not fire while the client is being written to.
                        async with asyncio.timeout(policy.idle_timeout_s) as wait:
                            live.wait = wait
                            batch = await anext(batches, None)
                    except TimeoutError:
                        if live.cut:
                            raise _shutting_down() from None
                        breaker.record_failure()
                        raise BackendTimeout("The model's backend stalled mid-stream.") from None
                    except GatewayError:
                        breaker.record_failure()
                        raise
                    finally:
                        live.wait = None
                raise BackendFailed("The model's backend ended the stream before it finished.")
        finally:
            if not verdict:
                breaker.release_probe()  # cancelled before a verdict: free the probe slot
            route.pool.release(endpoint)

    async def complete(self, completion: Completion) -> CompletedText:
        """Run a completion to its end and return the whole text."""
        assembler = ChoiceAssembler()
        routed = Routed(completion.model, "")
        async with aclosing(self.stream(completion)) as events:
            async for event in events:
                if type(event) is str:
                    assembler.text(event)
                elif type(event) is ChoiceDelta:
                    assembler.add(event)
                elif type(event) is Routed:
                    routed = event
                else:
                    assert isinstance(event, Finished)
                    choices = assembler.finish(event)
                    return CompletedText(completion, routed, choices[0].content, event, choices)
        raise BackendFailed("the backend ended the stream before the completion finished")


def _granted(completion: Completion, grant: Grant | None) -> Completion:
    """``completion`` admitted under ``grant`` (None: admission is off)."""
    if grant is None:
        return completion
    return dataclasses.replace(
        completion, tenant=grant.tenant, priority=grant.priority, allowed=grant.allowed, grant=grant
    )


def _into(spent: list[Spent | None], index: int) -> Callable[[Spent], None]:
    """Where choice ``index`` of a fan-out reports what it used."""

    def put(choice: Spent) -> None:
        spent[index] = choice

    return put


def _chars(delta: ChoiceDelta) -> int:
    """Characters a rich event sent (for the usage estimate when no count comes)."""
    return (
        len(delta.content)
        + len(delta.reasoning)
        + sum(len(c.name) + len(c.arguments) for c in delta.tool_calls)
    )


def _merge_text(items: list[StreamEvent]) -> list[StreamEvent]:
    """Join runs of plain text deltas between rich events (order kept)."""
    out: list[StreamEvent] = []
    run: list[Delta] = []
    for item in items:
        if type(item) is tuple:
            run.append(item)
            continue
        if run:
            out.append(("".join([t for t, _ in run]), sum([n for _, n in run])))
            run = []
        out.append(item)
    if run:
        out.append(("".join([t for t, _ in run]), sum([n for _, n in run])))
    return out
