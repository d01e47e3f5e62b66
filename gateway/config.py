"""The gateway's routing file (YAML): models, their aliases and endpoints.

Validated with pydantic; a bad file fails with every problem named by its
path in the file, before the gateway binds its port.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.routing.policies import DEFAULT_POLICY, POLICIES

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class AffinityConfig(BaseModel):
    """Tunables of the ``prefix_affinity`` policy."""

    model_config = ConfigDict(extra="forbid")

    load_factor: float = Field(
        default=1.25,
        ge=1.0,
        description="A replica keeps its keys while its load is within this x the mean load.",
    )
    prefix_chars: int = Field(
        default=4096,
        ge=1,
        description="Characters of each opening message (through the first user message) hashed.",
    )


class ModelConfig(BaseModel):
    """One model the gateway serves and the sidecars that serve it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    aliases: list[str] = Field(default_factory=list)
    endpoints: Annotated[list[str], Field(min_length=1)]
    engine_model: str | None = Field(
        default=None, description="Name the engine knows the model by; defaults to name."
    )
    owned_by: str = "llmgw"
    kind: Literal["chat", "embedding"] = Field(
        default="chat",
        description="chat: generates text (chat and completions); embedding: returns vectors.",
    )
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Completion limit when the client sets none; unset: up to the model's "
        "limit (the context minus the prompt), as vLLM does.",
    )
    max_output_tokens: int = Field(default=4096, ge=1)
    reserve_completion_tokens: int = Field(
        default=256,
        ge=1,
        description="Completion tokens rate limits reserve when the client sets no "
        "max_tokens; reconciled with the real count when the call ends.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models tried in order when this one's pool is down, open or saturated.",
    )
    max_inflight_per_endpoint: int = Field(
        default=256, ge=1, description="Requests one gateway process sends one endpoint at once."
    )
    lb_policy: str = Field(
        default=DEFAULT_POLICY,
        description="How an endpoint is chosen: " + ", ".join(POLICIES) + ".",
    )
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    panic_threshold_percent: float = Field(
        default=50.0,
        ge=0,
        le=100,
        description="Below this share of healthy endpoints, route over all of them (0: never).",
    )

    @field_validator("lb_policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in POLICIES:
            raise ValueError(f"unknown lb_policy {name!r}; known: {', '.join(POLICIES)}")
        return name

    @field_validator("endpoints")
    @classmethod
    def _addresses(cls, endpoints: list[str]) -> list[str]:
        for address in endpoints:
            if not _ADDRESS.match(address):
                raise ValueError(f"endpoint {address!r} is not host:port")
        return endpoints

    @model_validator(mode="after")
    def _defaults_fit(self) -> ModelConfig:
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens cannot exceed max_output_tokens")
        return self


class RetryConfig(BaseModel):
    """Retries before the first token (never after: see ARCHITECTURE.md)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=10)
    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    budget_min_per_s: float = Field(default=2.0, ge=0)
    backoff_base_s: float = Field(default=0.025, ge=0)
    backoff_max_s: float = Field(default=0.25, ge=0)


class BreakerConfig(BaseModel):
    """Circuit breaker thresholds, per endpoint."""

    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    window_s: float = Field(default=10.0, gt=0)
    min_calls_in_window: int = Field(default=20, ge=1)
    cooldown_s: float = Field(default=5.0, gt=0)
    half_open_probes: int = Field(default=2, ge=1)


class HealthConfig(BaseModel):
    """Active checks of each sidecar (grpc.health.v1 Check and GetLoad)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    unhealthy_threshold: int = Field(default=2, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)


class StreamingConfig(BaseModel):
    """Per-stream buffering between backend and client (see common.batching, common.pace)."""

    model_config = ConfigDict(extra="forbid")

    max_hold_ms: float = Field(
        default=50.0,
        ge=0,
        description="While this process falls behind, a stream's next message is held up to "
        "this long so its tokens merge (0: never). The first token is never held.",
    )
    max_buffered_chars: int = Field(
        default=256 * 1024,
        ge=1,
        description="Text buffered for a client that is behind; beyond it the gateway stops "
        "pulling from the backend (backpressure).",
    )
    max_message_chars: int = Field(
        default=1024 * 1024,
        ge=1,
        le=3 * 1024 * 1024,
        description="Largest merged delta (UTF-8: at most 4 bytes a character, under the "
        "16 MiB message limit).",
    )
    stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A client that reads nothing this long with its buffer full is cut off.",
    )


class ResilienceConfig(BaseModel):
    """Timeouts, retries, breakers and health checks (defaults in ARCHITECTURE.md)."""

    model_config = ConfigDict(extra="forbid")

    ttft_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    queue_timeout_s: float = Field(default=10.0, ge=0)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)


class RequestLimitsConfig(BaseModel):
    """Caps on one request's size, checked before any per-item work (README "Security")."""

    model_config = ConfigDict(extra="forbid")

    max_list_items: int = Field(
        default=2048, ge=1, description="Most messages (or other list items) in one request."
    )


class DiscoveryConfig(BaseModel):
    """How endpoint host names are re-resolved (each address is its own endpoint)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=5.0, gt=0, description="Re-resolve every name this often.")
    timeout_s: float = Field(default=2.0, gt=0, description="Longest wait for one resolution.")
    family: Literal["any", "ipv4", "ipv6"] = Field(
        default="any", description="Address family to use when a name has both."
    )


class GatewayConfig(BaseModel):
    """The whole routing file."""

    model_config = ConfigDict(extra="forbid")

    models: Annotated[list[ModelConfig], Field(min_length=1)]
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    request_limits: RequestLimitsConfig = Field(default_factory=RequestLimitsConfig)

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> GatewayConfig:
        names = {m.name for m in self.models}
        for model in self.models:
            for fallback in model.fallbacks:
                if fallback not in names:
                    raise ValueError(
                        f"model {model.name!r} falls back to unknown model {fallback!r}"
                    )
                if fallback == model.name:
                    raise ValueError(f"model {model.name!r} cannot fall back to itself")
                kind = next(m.kind for m in self.models if m.name == fallback)
                if kind != model.kind:
                    raise ValueError(
                        f"model {model.name!r} ({model.kind}) cannot fall back to "
                        f"{fallback!r} ({kind})"
                    )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} is used twice")
                seen.add(name)
        return self


def read_yaml(path: Path, what: str) -> object:
    """Parse a YAML file; ConfigError says which file and why when it cannot."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from error


def invalid(what: str, source: object, error: ValidationError) -> ConfigError:
    """A ConfigError naming every problem by its path in the file."""
    lines = [
        f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
        for e in error.errors()
    ]
    return ConfigError(f"{what} {source} is invalid:\n" + "\n".join(lines))


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a YAML routing file; raise ConfigError with a readable message."""
    raw = read_yaml(path, "gateway config")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as error:
        raise invalid("gateway config", path, error) from error
