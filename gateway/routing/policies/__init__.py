"""Load-balancing policies: which endpoint of a pool serves a request.

A policy only *chooses*; the pool reserves the slot (breaker probe and
in-flight count) and queues when nothing has room. To add a policy, write a
class with ``choose`` (see ``base.LoadBalancingPolicy``) in its own module and
add it to ``POLICIES`` below; its name is then valid as a model's
``lb_policy`` in the routing file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.routing.policies.base import LoadBalancingPolicy, PolicySettings, RequestKey
from gateway.routing.policies.least_load import LeastLoad
from gateway.routing.policies.prefix_affinity import PrefixAffinity
from gateway.routing.policies.round_robin import RoundRobin

# name in the routing file -> factory(settings) -> a fresh policy for one pool
POLICIES: Mapping[str, Callable[[PolicySettings], LoadBalancingPolicy]] = {
    "least_load": LeastLoad,
    "round_robin": RoundRobin,
    "prefix_affinity": PrefixAffinity,
}
DEFAULT_POLICY = "least_load"


def make_policy(name: str, settings: PolicySettings | None = None) -> LoadBalancingPolicy:
    """A new policy instance by its routing-file name; KeyError if unknown."""
    return POLICIES[name](settings or PolicySettings())


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "LoadBalancingPolicy",
    "PolicySettings",
    "RequestKey",
    "make_policy",
]
