"""A simulated inference engine with a realistic latency and queueing model.

It is what the zero-setup demo, the tests and the load tests run on, so it
behaves like a continuous-batching engine where it matters to a gateway:
a time to first token (plus prefill time for the prompt tokens its
prefix cache does not hold, see ``prefix_cache``), an
inter-token latency, a fixed number of concurrent sequences with a real
FIFO waiting queue behind them (so load reports and queue depth are real),
a bounded queue that refuses work when full, prompt aborts, and failure
injection for tests. Output text is deterministic: built from the prompt's
own words, so a test can predict it. It also embeds: each word maps to a
fixed pseudo-random vector (seeded by a hash of the word), a text to the
normalised sum of its words', so equal texts give equal vectors and texts
that share words point the same way.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import math
import random
import re
import zlib
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from backends.engine import (
    CONTEXT_LENGTH_EXCEEDED,
    ChoiceEvent,
    Delta,
    Embeddings,
    EmbedRequest,
    EngineEvent,
    EngineFailed,
    EngineRejectedRequest,
    EngineRequest,
    EngineUnavailable,
    Finished,
    FinishReason,
    LoadReport,
    ToolCallFragment,
)
from backends.engines.prefix_cache import PrefixCache, PrefixCacheStats, prompt_text
from backends.engines.sim_plan import (
    ChoicePlan,
    continues_prompt,
    logprob_of,
    needs_plan,
    plan_choice,
)

_sleep = asyncio.sleep  # the engine's only clock wait (a test may record the delays)

_FALLBACK_VOCABULARY = ("the", "gateway", "streams", "tokens", "from", "a", "simulated", "engine")


class FailureMode(enum.StrEnum):
    """Faults the simulator can inject, for tests and chaos drills."""

    NONE = "none"
    ERROR_AT_START = "error_at_start"
    ERROR_AFTER_TOKENS = "error_after_tokens"
    HANG = "hang"
    STALL_AFTER_TOKENS = "stall_after_tokens"
    SLOW = "slow"


class SimConfig(BaseModel):
    """Latency model, capacity and fault injection of the simulator."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float = Field(default=0.0, ge=0, description="Base time to first token.")
    prefill_ms_per_1k_tokens: float = Field(
        default=0.0,
        ge=0,
        description="Extra time to first token per 1000 prompt tokens not in the prefix cache.",
    )
    prefix_cache_blocks: int = Field(
        default=8192,
        ge=0,
        description="Prefix (KV) cache size in blocks, least recently used evicted; 0: off.",
    )
    block_tokens: int = Field(default=16, ge=1, description="Tokens per prefix-cache block.")
    itl_ms: float = Field(default=0.0, ge=0, description="Time between two tokens.")
    output_tokens: int = Field(default=64, ge=1, description="Natural answer length in tokens.")
    max_concurrency: int = Field(default=256, ge=1, description="Sequences generated at once.")
    max_waiting: int = Field(default=4096, ge=0, description="Queue length before refusing.")
    max_context_tokens: int = Field(default=8192, ge=16, description="Prompt + output limit.")
    failure_mode: FailureMode = FailureMode.NONE
    failure_probability: float = Field(default=1.0, ge=0, le=1)
    failure_after_tokens: int = Field(default=8, ge=0)
    slow_factor: float = Field(default=10.0, ge=1, description="Latency multiplier for 'slow'.")
    random_seed: int = 0
    input_modalities: list[str] = Field(
        default_factory=lambda: ["text"],
        description="Content part types the model accepts besides text: image_url, input_audio.",
    )
    embedding_dimensions: int = Field(
        default=384, ge=1, le=8192, description="Length of the vectors Embed returns."
    )


def estimate_prompt_tokens(request: EngineRequest) -> int:
    """Approximate a tokenizer: about four characters a token, plus per-message framing."""
    if request.prompt is not None:
        return len(request.prompt) // 4 + 1
    return sum(len(m.content) // 4 + 4 for m in request.messages) + 2


def text_tokens(item: str | Sequence[int]) -> int:
    """Tokens of one embedding input: ids count as given, text about four characters a token."""
    return len(item) if not isinstance(item, str) else len(item) // 4 + 1


@dataclass(slots=True)
class _Counters:
    running: int = 0
    waiting: int = 0
    received: int = 0
    started: int = 0
    aborted: int = 0


class SimEngine:
    """Simulated continuous-batching engine (see the module docstring)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._counters = _Counters()
        self._random = random.Random(self.config.random_seed)
        self._prefix_cache = PrefixCache(self.config.prefix_cache_blocks, self.config.block_tokens)

    @property
    def active(self) -> int:
        """Requests running or waiting in the engine right now."""
        return self._counters.running + self._counters.waiting

    @property
    def aborted(self) -> int:
        """Requests stopped before they finished (cancelled by the caller)."""
        return self._counters.aborted

    @property
    def received(self) -> int:
        """Requests that reached the engine, refused ones included."""
        return self._counters.received

    @property
    def started(self) -> int:
        """Requests admitted since start."""
        return self._counters.started

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """Prefix-cache queries and hits (tokens) since start."""
        return self._prefix_cache.stats

    def load(self) -> LoadReport:
        """Report running and waiting sequences against capacity."""
        c = self._counters
        return LoadReport(
            running=c.running, waiting=c.waiting, capacity=self.config.max_concurrency
        )

    def ready(self) -> bool:
        """Always ready: nothing to load."""
        return True

    async def start(self) -> None:
        """Nothing to acquire."""

    async def close(self) -> None:
        """Nothing to release."""

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Deterministic unit vectors (see the module docstring), after the latency
        model's time to first token; ``dimensions`` keeps the leading components
        and renormalises, as Matryoshka models do."""
        cfg = self.config
        size = request.dimensions or cfg.embedding_dimensions
        if size > cfg.embedding_dimensions:
            raise EngineRejectedRequest(
                f"dimensions must be at most {cfg.embedding_dimensions} for this model, got {size}",
                field="dimensions",
            )
        tokens = sum(text_tokens(item) for item in request.inputs)
        if max(text_tokens(item) for item in request.inputs) > cfg.max_context_tokens:
            raise EngineRejectedRequest(
                f"This model's maximum context length is {cfg.max_context_tokens} tokens; "
                "an input is longer.",
                field="input",
            )
        self._counters.received += 1
        if self._injects_failure() and cfg.failure_mode is FailureMode.ERROR_AT_START:
            raise EngineFailed("injected failure at start")
        counters = self._counters
        counters.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            counters.waiting -= 1
        counters.running += 1
        counters.started += 1
        try:
            delay = (cfg.ttft_ms + cfg.prefill_ms_per_1k_tokens * tokens / 1000) / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            vectors = [
                _truncate(embed_text(item, cfg.embedding_dimensions), size)
                for item in request.inputs
            ]
        finally:
            counters.running -= 1
            self._slots.release()
        return Embeddings(vectors=vectors, prompt_tokens=tokens)

    def _injects_failure(self) -> bool:
        cfg = self.config
        return cfg.failure_mode is not FailureMode.NONE and (
            cfg.failure_probability >= 1.0 or self._random.random() < cfg.failure_probability
        )

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Wait for a slot, then stream the deterministic answer on schedule."""
        cfg = self.config
        self._counters.received += 1
        self._check_modalities(request)
        prompt_tokens = estimate_prompt_tokens(request)
        asked = request.max_tokens
        # No limit asked: as vLLM, whatever the context leaves after the prompt.
        limit = asked if asked is not None else cfg.max_context_tokens - prompt_tokens
        if prompt_tokens + max(limit, 1) > cfg.max_context_tokens:
            raise EngineRejectedRequest(
                f"This model's maximum context length is {cfg.max_context_tokens} tokens. "
                f"However, you requested {prompt_tokens + max(limit, 1)} tokens "
                f"({prompt_tokens} in the messages, {max(limit, 1)} in the completion).",
                reason=CONTEXT_LENGTH_EXCEEDED,
            )
        counters = self._counters
        if counters.waiting >= cfg.max_waiting and self._slots.locked():
            raise EngineUnavailable("engine queue is full")
        fault = cfg.failure_mode if self._injects_failure() else FailureMode.NONE
        if fault is FailureMode.ERROR_AT_START:
            raise EngineFailed("injected failure at start")

        counters.waiting += 1
        finished = False
        try:
            await self._slots.acquire()
        except BaseException:
            counters.waiting -= 1
            counters.aborted += 1
            raise
        counters.waiting -= 1
        counters.running += 1
        counters.started += 1
        try:
            run = self._run_planned if needs_plan(request) else self._run
            async with aclosing(run(request, prompt_tokens, limit, fault)) as events:
                async for event in events:
                    yield event
            finished = True
        finally:
            counters.running -= 1
            if not finished:
                counters.aborted += 1
            self._slots.release()

    def _check_modalities(self, request: EngineRequest) -> None:
        accepted = self.config.input_modalities
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.parts):
                kind = part.get("type", "text")
                if kind != "text" and kind not in accepted:
                    what = "image" if kind == "image_url" else "audio"
                    raise EngineRejectedRequest(
                        f"The model '{request.model}' does not accept {what} input "
                        f"({kind} content parts); send text only.",
                        field=f"messages[{i}].content[{j}]",
                    )

    async def _run(
        self, request: EngineRequest, prompt_tokens: int, limit: int, fault: FailureMode
    ) -> AsyncGenerator[EngineEvent, None]:
        cfg = self.config
        slow = cfg.slow_factor if fault is FailureMode.SLOW else 1.0
        loop = asyncio.get_running_loop()
        # Prefill only what the cache does not hold (looked up once the request runs, as
        # an engine does when it schedules it).
        prompt = _prompt_of(request)
        cached = self._prefix_cache.lookup_and_store(prompt, prompt_tokens)
        prefill = cfg.prefill_ms_per_1k_tokens * (prompt_tokens - cached) / 1000
        ttft = (cfg.ttft_ms + prefill) * slow / 1000
        itl = cfg.itl_ms * slow / 1000
        due = loop.time() + ttft
        if ttft > 0:
            await _sleep(ttft)
        if fault is FailureMode.HANG:
            await asyncio.Event().wait()  # until cancelled, like a wedged engine
        words = _vocabulary(request)
        offset = _prompt_hash(request)
        natural = cfg.output_tokens
        stops = tuple(s for s in request.stop if s)
        tail = ""
        produced = 0
        continues = continues_prompt(request)
        generated: list[str] = []  # kept for the prefix cache, as an engine keeps their KV
        while produced < natural and produced < limit:
            if produced >= cfg.failure_after_tokens:
                if fault is FailureMode.ERROR_AFTER_TOKENS:
                    raise EngineFailed(f"injected failure after {produced} tokens")
                if fault is FailureMode.STALL_AFTER_TOKENS:
                    await asyncio.Event().wait()  # alive but silent, until cancelled
            word = words[(offset + produced * 7) % len(words)]
            text = word if produced == 0 and not continues else " " + word
            produced += 1
            if stops:
                tail = (tail + text)[-64:]
                hit = _find_stop(tail, text, stops)
                if hit is not None:
                    if hit:
                        yield Delta(hit, 1)
                    yield Finished(FinishReason.STOP, prompt_tokens, produced)
                    return
            generated.append(text)
            yield Delta(text, 1)
            if itl > 0 and produced < natural and produced < limit:
                due += itl
                delay = due - loop.time()
                if delay > 0:
                    await _sleep(delay)
        self._prefix_cache.store(prompt + "<|assistant|>" + "".join(generated))
        reason = FinishReason.STOP if produced >= natural else FinishReason.LENGTH
        yield Finished(reason, prompt_tokens, produced)

    async def _run_planned(
        self, request: EngineRequest, prompt_tokens: int, limit: int, fault: FailureMode
    ) -> AsyncGenerator[EngineEvent, None]:
        """Several choices, tool calls, JSON, reasoning or log probabilities:
        every choice advances one token per step, as a batch engine decodes."""
        cfg = self.config
        slow = cfg.slow_factor if fault is FailureMode.SLOW else 1.0
        loop = asyncio.get_running_loop()
        prompt = _prompt_of(request)
        cached = self._prefix_cache.lookup_and_store(prompt, prompt_tokens)
        prefill = cfg.prefill_ms_per_1k_tokens * (prompt_tokens - cached) / 1000
        ttft = (cfg.ttft_ms + prefill) * slow / 1000
        itl = cfg.itl_ms * slow / 1000
        due = loop.time() + ttft
        if ttft > 0:
            await _sleep(ttft)
        if fault is FailureMode.HANG:
            await asyncio.Event().wait()
        words = _vocabulary(request)
        seed = _prompt_hash(request)
        stops = tuple(s for s in request.stop if s)
        plans: list[ChoicePlan] = [
            plan_choice(request, words, seed, k, cfg.output_tokens, stops) for k in range(request.n)
        ]
        top = request.top_logprobs or 0
        steps = min(limit, max(len(p.tokens) for p in plans))
        produced = 0
        for step in range(steps):
            if step >= cfg.failure_after_tokens:
                if fault is FailureMode.ERROR_AFTER_TOKENS:
                    raise EngineFailed(f"injected failure after {step} tokens")
                if fault is FailureMode.STALL_AFTER_TOKENS:
                    await asyncio.Event().wait()
            for index, plan in enumerate(plans):
                if step >= len(plan.tokens):
                    continue
                token = plan.tokens[step]
                produced += 1
                if token.kind == "reasoning":
                    yield ChoiceEvent(index, 1, reasoning=token.text)
                elif token.kind == "tool":
                    fragment = ToolCallFragment(
                        token.tool_index, token.tool_id, token.tool_name, token.text
                    )
                    yield ChoiceEvent(index, 1, tool_calls=(fragment,))
                elif request.logprobs:
                    logprob = logprob_of(token.text, step, top, words)
                    yield ChoiceEvent(index, 1, text=token.text, logprobs=(logprob,))
                elif index == 0:
                    yield Delta(token.text, 1)
                else:
                    yield ChoiceEvent(index, 1, text=token.text)
            if itl > 0 and step + 1 < steps:
                due += itl
                delay = due - loop.time()
                if delay > 0:
                    await _sleep(delay)
        reasons = [p.finish if len(p.tokens) <= limit else FinishReason.LENGTH for p in plans]
        yield Finished(
            reasons[0], prompt_tokens, produced, tuple(reasons) if len(plans) > 1 else ()
        )


def _prompt_of(request: EngineRequest) -> str:
    """The text the prefix cache keys on: the raw prompt, or the rendered messages."""
    if request.prompt is not None:
        return request.prompt
    return prompt_text([(m.role, m.content) for m in request.messages])


def _vocabulary(request: EngineRequest) -> tuple[str, ...]:
    if request.prompt is not None:
        return tuple(w for w in request.prompt.split() if w) or _FALLBACK_VOCABULARY
    for message in reversed(request.messages):
        if message.role == "user":
            words = tuple(w for w in message.content.split() if w)
            if words:
                return words
    return _FALLBACK_VOCABULARY


def _prompt_hash(request: EngineRequest) -> int:
    digest = 0
    if request.prompt is not None:
        digest = zlib.crc32(request.prompt.encode())
    for message in request.messages:
        digest = zlib.crc32(message.content.encode(), digest)
    return digest + (request.seed or 0)


def _find_stop(tail: str, text: str, stops: tuple[str, ...]) -> str | None:
    """If a stop sequence ends in ``tail``, return the part of ``text`` before it."""
    for stop in stops:
        at = tail.find(stop)
        if at >= 0:
            keep = len(text) - (len(tail) - at)
            return text[: max(keep, 0)]
    return None


_WORD = re.compile(r"\w+")


@lru_cache(maxsize=16384)
def _word_vector(word: str, size: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
    draw = random.Random(seed).gauss
    return tuple(draw(0.0, 1.0) for _ in range(size))


def embed_text(item: str | Sequence[int], size: int) -> list[float]:
    """The unit vector of one input: the normalised sum of its words' vectors
    (token ids count as words), or of the whole input when it has no word."""
    if isinstance(item, str):
        words = [w.lower() for w in _WORD.findall(item)] or [item]
    else:
        words = [f"#{i}" for i in item]
    total = [0.0] * size
    for word in words:
        for i, value in enumerate(_word_vector(word, size)):
            total[i] += value
    return _normalised(total)


def _truncate(vector: list[float], size: int) -> list[float]:
    return vector if size >= len(vector) else _normalised(vector[:size])


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
