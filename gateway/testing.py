"""Fakes at the chat service's seams, shipped so that its behaviour (retries,
breakers, fallbacks, queueing, drain, accounting) is tested in milliseconds
without a network or sleeping, as httpx's ``MockTransport`` does for HTTP.

- ``ScriptedBackend`` is a ``BackendPort``: each call to an endpoint plays the
  next script queued for that address (text deltas, an error, a hang, the
  end), and every call is recorded.
- ``FakeClock`` is a monotonic clock that moves only when told to: inject it
  into pools (breaker cooldowns and windows) and the service.
- ``routes`` builds a registry of pools over fake addresses.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.domain.chat import Finished, FinishReason, Generation, StreamEvent, Usage
from gateway.errors import GatewayError
from gateway.routing.breaker import BreakerPolicy
from gateway.routing.limits import OutputLimits
from gateway.routing.pool import EndpointPool
from gateway.routing.registry import ModelRegistry, ModelRoute


class FakeClock:
    """Seconds that advance only through ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass(frozen=True, slots=True)
class Text:
    """A text delta of ``tokens`` tokens."""

    text: str
    tokens: int = 1


@dataclass(frozen=True, slots=True)
class Fail:
    """The call fails with ``error`` (as the backend client raises it)."""

    error: GatewayError


@dataclass(frozen=True, slots=True)
class Hang:
    """The backend goes silent until the call is cancelled."""


@dataclass(frozen=True, slots=True)
class Gate:
    """Wait until the test opens ``event`` (to hold a stream at a known point)."""

    event: asyncio.Event


@dataclass(frozen=True, slots=True)
class Finish:
    """The end; completion tokens default to the tokens sent."""

    prompt_tokens: int = 3
    completion_tokens: int | None = None
    reason: FinishReason = FinishReason.STOP


Step = Text | Fail | Hang | Gate | Finish
DEFAULT_SCRIPT: tuple[Step, ...] = (Text("hello"), Text(" world"), Finish())


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded backend call."""

    address: str
    generation: Generation


class ScriptedBackend:
    """A BackendPort that plays queued scripts per address (``default`` when none is queued)."""

    def __init__(self, default: Sequence[Step] = DEFAULT_SCRIPT) -> None:
        self._default = tuple(default)
        self._scripts: dict[str, deque[tuple[Step, ...]]] = defaultdict(deque)
        self.calls: list[Call] = []
        self.open = 0  # calls in progress
        self.closed = 0  # calls that ended before their script did (cancelled or closed)

    def script(self, address: str, *plays: Sequence[Step]) -> ScriptedBackend:
        """Queue one script per future call to ``address``."""
        self._scripts[address].extend(tuple(p) for p in plays)
        return self

    def calls_to(self, address: str) -> int:
        """How many calls ``address`` received."""
        return sum(1 for c in self.calls if c.address == address)

    async def generate(
        self, address: str, generation: Generation
    ) -> AsyncGenerator[StreamEvent, None]:
        """Play the next script for ``address``."""
        self.calls.append(Call(address, generation))
        queued = self._scripts.get(address)
        steps = queued.popleft() if queued else self._default
        self.open += 1
        sent = 0
        done = False
        try:
            for step in steps:
                await asyncio.sleep(0)  # a real stream yields to the loop between messages
                if type(step) is Text:
                    sent += step.tokens
                    yield (step.text, step.tokens)
                elif type(step) is Fail:
                    raise step.error
                elif type(step) is Hang:
                    await asyncio.Event().wait()
                elif type(step) is Gate:
                    await step.event.wait()
                else:
                    assert type(step) is Finish
                    completion = sent if step.completion_tokens is None else step.completion_tokens
                    done = True
                    yield Finished(step.reason, Usage(step.prompt_tokens, completion))
                    return
            done = True
        finally:
            self.open -= 1
            if not done:
                self.closed += 1


def routes(
    pools: Mapping[str, Sequence[str]],
    clock: Callable[[], float],
    breaker: BreakerPolicy | None = None,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    max_inflight: int = 256,
    max_output_tokens: int = 1000,
) -> ModelRegistry:
    """A registry of one pool per model over the given (fake) addresses."""
    return ModelRegistry(
        ModelRoute(
            name=name,
            aliases=(),
            engine_model=name,
            owned_by="test",
            limits=OutputLimits(default_max_tokens=16, max_output_tokens=max_output_tokens),
            pool=EndpointPool(addresses, breaker, max_inflight=max_inflight, clock=clock),
            fallbacks=tuple((fallbacks or {}).get(name, ())),
        )
        for name, addresses in pools.items()
    )
