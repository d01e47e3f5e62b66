"""What every load-balancing policy is given and must answer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.routing.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What a policy may know of a request, without the domain's types.

    ``session`` is an explicit affinity key (a session header or OpenAI's
    ``user``); ``opening`` the conversation's leading messages (role and
    text, through the first user message), which stay the same on every
    later turn of that conversation. Policies that do not use them ignore
    them.
    """

    session: str = ""
    opening: tuple[str, ...] = ()


NO_KEY = RequestKey()


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Tunables a policy may read (from the model's ``affinity`` block)."""

    load_factor: float = 1.25  # prefix_affinity: bound = load_factor x mean load
    prefix_chars: int = 4096  # prefix_affinity: characters of each opening message hashed
    rng: random.Random = field(default_factory=random.Random, compare=False)


class LoadBalancingPolicy(Protocol):
    """Chooses one endpoint among candidates; reserves nothing.

    ``candidates`` is never empty and holds only endpoints that are usable
    and have room, in the pool's order. ``pool`` is every endpoint of the
    pool (for policies that need a stable view, such as consistent
    hashing). The pool reserves the chosen endpoint and calls again without
    it if the reservation fails (a half-open breaker with no probe left).
    """

    def choose(
        self, candidates: Sequence[Endpoint], pool: Sequence[Endpoint], key: RequestKey
    ) -> Endpoint:
        """The endpoint to try."""
        ...
