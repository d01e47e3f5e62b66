"""Builds the model registry from the validated configuration, and applies a
new configuration to a running one (a routing-file reload)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import GatewayConfig, ModelConfig
from gateway.routing.breaker import BreakerPolicy
from gateway.routing.endpoint import Endpoint
from gateway.routing.limits import OutputLimits
from gateway.routing.policies import LoadBalancingPolicy, PolicySettings, make_policy
from gateway.routing.pool import EndpointPool
from gateway.routing.registry import ModelKind, ModelRegistry, ModelRoute


def _policy(m: ModelConfig) -> LoadBalancingPolicy:
    return make_policy(
        m.lb_policy,
        PolicySettings(load_factor=m.affinity.load_factor, prefix_chars=m.affinity.prefix_chars),
    )


def _route(m: ModelConfig, pool: EndpointPool) -> ModelRoute:
    return ModelRoute(
        name=m.name,
        aliases=tuple(m.aliases),
        engine_model=m.engine_model or m.name,
        owned_by=m.owned_by,
        limits=OutputLimits(m.default_max_tokens, m.max_output_tokens, m.reserve_completion_tokens),
        pool=pool,
        fallbacks=tuple(m.fallbacks),
        kind=ModelKind(m.kind),
    )


def build_registry(
    config: GatewayConfig, addresses: Mapping[str, Sequence[str]] | None = None
) -> ModelRegistry:
    """One route per configured model. ``addresses`` (model name -> resolved
    endpoint addresses) replaces a model's configured endpoints when given."""
    registry = ModelRegistry(())
    apply_config(registry, config, addresses)
    return registry


@dataclass
class Applied:
    """What changed: endpoints that joined, and endpoints (and whole pools of
    models that are gone) that now drain."""

    added: list[Endpoint] = field(default_factory=list)
    removed: list[Endpoint] = field(default_factory=list)
    retired_pools: list[EndpointPool] = field(default_factory=list)


def apply_config(
    registry: ModelRegistry,
    config: GatewayConfig,
    addresses: Mapping[str, Sequence[str]] | None = None,
) -> Applied:
    """Make ``registry`` serve ``config``, keeping what carries over.

    A model that stays keeps its pool object: endpoints whose address stays
    keep their health, breaker and in-flight count, requests in flight keep
    releasing into the same pool, and its queue keeps its waiters. Removed
    endpoints drain (no new requests; streams finish). The pool's policy,
    in-flight bound and panic threshold follow the new file. Breaker
    thresholds apply to endpoints created from now on.
    """
    current = {route.name: route.pool for route in registry.routes}
    breaker = BreakerPolicy(**config.resilience.breaker.model_dump())
    applied = Applied()
    routes = []
    for m in config.models:
        wanted = list((addresses or {}).get(m.name, m.endpoints))
        pool = current.pop(m.name, None)
        if pool is None:
            pool = EndpointPool([], breaker_policy=breaker)
        pool.breaker_policy = breaker
        pool.policy = _policy(m)
        pool.policy_name = m.lb_policy
        pool.panic_threshold = m.panic_threshold_percent
        pool.max_inflight = m.max_inflight_per_endpoint
        for endpoint in pool.endpoints:
            endpoint.max_inflight = m.max_inflight_per_endpoint
        added, removed = pool.set_addresses(wanted)
        applied.added.extend(added)
        applied.removed.extend(removed)
        routes.append(_route(m, pool))
    for pool in current.values():  # models no longer in the file
        _, removed = pool.set_addresses([])
        applied.removed.extend(removed)
        applied.retired_pools.append(pool)
    registry.replace(routes)
    return applied
