"""Builds the model registry from the validated configuration."""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.routing.breaker import BreakerPolicy
from gateway.routing.limits import OutputLimits
from gateway.routing.policies import PolicySettings, make_policy
from gateway.routing.pool import EndpointPool
from gateway.routing.registry import ModelRegistry, ModelRoute


def build_registry(config: GatewayConfig) -> ModelRegistry:
    """One route per configured model."""
    return ModelRegistry(
        ModelRoute(
            name=m.name,
            aliases=tuple(m.aliases),
            engine_model=m.engine_model or m.name,
            owned_by=m.owned_by,
            limits=OutputLimits(
                m.default_max_tokens, m.max_output_tokens, m.reserve_completion_tokens
            ),
            pool=EndpointPool(
                m.endpoints,
                breaker_policy=BreakerPolicy(**config.resilience.breaker.model_dump()),
                max_inflight=m.max_inflight_per_endpoint,
                policy=make_policy(
                    m.lb_policy,
                    PolicySettings(
                        load_factor=m.affinity.load_factor,
                        prefix_chars=m.affinity.prefix_chars,
                    ),
                ),
                panic_threshold=m.panic_threshold_percent,
            ),
            fallbacks=tuple(m.fallbacks),
        )
        for m in config.models
    )
