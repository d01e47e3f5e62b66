"""Process settings of a sidecar, from flags and LLMGW_SIDECAR_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.grpcutil.tls import server_tls


class SidecarSettings(BaseSettings):
    """Which engine the sidecar fronts, where it listens, and the engine's own settings."""

    model_config = SettingsConfigDict(env_prefix="LLMGW_SIDECAR_", extra="forbid")

    engine: str = Field(
        default="sim",
        description="Engine behind the sidecar (one of backends/engines/registry.py's ENGINES).",
    )
    engine_config: str = Field(
        default="{}",
        description="The engine's settings as a JSON object (validated by its settings class).",
    )
    listen: str = Field(default="127.0.0.1:50061", description="host:port of the sidecar's gRPC.")
    model: str | None = Field(
        default=None,
        description="Model name the engine serves (vllm: its --served-model-name; "
        "learnt from vLLM's /v1/models when omitted).",
    )
    sim_config: str = Field(
        default="{}",
        description='Simulator settings as JSON, e.g. \'{"ttft_ms": 50, "itl_ms": 10}\'.',
    )
    vllm_url: str | None = Field(
        default=None, description="vLLM's HTTP server, e.g. http://127.0.0.1:8000."
    )
    vllm_capacity: int = Field(default=256, ge=1, description="vLLM's --max-num-seqs, for GetLoad.")
    metrics_listen: str = Field(
        default="", description="host:port for Prometheus /metrics; empty disables."
    )
    log_level: str = "INFO"
    stream_interval_ms: float = Field(
        default=0.0,
        ge=0,
        description="Hold deltas this long after each message so they go out merged "
        "(0: off; the first token is never held).",
    )
    max_hold_ms: float = Field(
        default=50.0,
        ge=0,
        description="While this process falls behind, hold a stream's next message up to this "
        "long so its tokens merge (0: never; the first token is never held).",
    )
    stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A receiver that reads nothing this long with the stream's buffer full is "
        "cut off (the engine's request is aborted).",
    )

    tls_cert: Path | None = Field(
        default=None, description="PEM certificate: serve gRPC over TLS (with --tls-key)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of --tls-cert.")
    tls_client_ca: Path | None = Field(
        default=None,
        description="CA of the clients' certificates: mutual TLS, callers without a "
        "certificate from it (anyone but the gateway) are refused.",
    )
    shutdown_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM, time streams in flight get to finish before they are ended "
        "with an error status (health says NOT_SERVING at once).",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, name: str) -> str:
        from backends.engines.registry import engine_names  # the engines import httpx &c.

        if name not in engine_names():
            raise ValueError(f"unknown engine {name!r}; known: {', '.join(engine_names())}")
        return name

    @model_validator(mode="after")
    def _tls_complete(self) -> SidecarSettings:
        server_tls(self.tls_cert, self.tls_key, self.tls_client_ca)  # ValueError if half given
        return self

    @model_validator(mode="after")
    def _engine_needs(self) -> SidecarSettings:
        if self.engine == "vllm" and not self.vllm_url and '"url"' not in self.engine_config:
            raise ValueError("--engine vllm needs --vllm-url")
        return self
